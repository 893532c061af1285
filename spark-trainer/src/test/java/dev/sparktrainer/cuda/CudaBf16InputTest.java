package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparktrainer.engine.DType;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelZoo;
import org.junit.jupiter.api.Test;

/** Note [bf16 input] in Model: staging the input in bf16 (opt-in) for a mixed-precision first convolution changes no bit. */
class CudaBf16InputTest {
  @Test
  void bf16InputSlotsTrainToTheSameBitsAsFp32() {
    CudaTestSupport.assumeGpu();
    try (CudaDevice d = new CudaDevice(0)) {
      assertEquals(DType.FLOAT32, new Model(ModelZoo.fashionMnistCnn(), d, DType.BFLOAT16).inputDType(), "default");
      CudaGraphTest.Run full = CudaGraphTest.train(d, ModelZoo.fashionMnistCnn(), DType.BFLOAT16, false);
      CudaGraphTest.Run low;
      System.setProperty("sparktrainer.train.bf16Input", "true");
      try {
        assertEquals(DType.BFLOAT16, new Model(ModelZoo.fashionMnistCnn(), d, DType.BFLOAT16).inputDType());
        assertEquals(DType.FLOAT32, new Model(ModelZoo.fashionMnistCnn(), d, DType.FLOAT32).inputDType());
        low = CudaGraphTest.train(d, ModelZoo.fashionMnistCnn(), DType.BFLOAT16, false);
      } finally {
        System.clearProperty("sparktrainer.train.bf16Input");
      }
      CudaGraphTest.assertSameRun(full, low, "Fashion-MNIST CNN bf16, input staged in bf16 vs fp32");
      CudaTestLog.note("bf16 input slots: bitwise the fp32-input run (Fashion-MNIST CNN, bf16, "
          + CudaGraphTest.EPOCHS + " epochs)");
    }
  }
}
