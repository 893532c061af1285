/** Collectives between ranks: the {@link dev.sparktrainer.comm.Communicator} interface, the authenticated TCP ring for CPUs, the {@link dev.sparktrainer.comm.WorkerContext} rendezvous and the local (non-Spark) launcher. */
package dev.sparktrainer.comm;
