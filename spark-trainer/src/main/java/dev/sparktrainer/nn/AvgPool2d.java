package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Pool2dDesc;

/** Average pooling as torch.nn.AvgPool2d (ceil_mode=False, count_include_pad=True). */
public final class AvgPool2d extends Pool2d {
  public AvgPool2d(Pool2dDesc desc) {
    super(desc, true);
  }
}
