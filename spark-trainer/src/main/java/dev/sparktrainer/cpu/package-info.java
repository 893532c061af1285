/** The CPU backend: plain Java loops plus GEMM through dev.ludovic.netlib's BLAS; bitwise reproducible on one machine. Knows no Spark. */
package dev.sparktrainer.cpu;
