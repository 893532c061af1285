package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Pool2dDesc;

/** Max pooling as torch.nn.MaxPool2d (ceil_mode=False): the maximum of each window; padding is -infinity. */
public final class MaxPool2d extends Pool2d {
  public MaxPool2d(Pool2dDesc desc) {
    super(desc, false);
  }
}
