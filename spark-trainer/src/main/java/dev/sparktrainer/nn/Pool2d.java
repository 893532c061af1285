package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;

/**
 * Max or average pooling over 2-D windows, as torch.nn.MaxPool2d / AvgPool2d (ceil_mode=False; average
 * pooling with count_include_pad=True): x (N, C, H, W) -> (N, C, OH, OW). No parameters. The two layers are
 * {@link MaxPool2d} and {@link AvgPool2d}.
 */
abstract class Pool2d extends Layer {
  private final Pool2dDesc desc;
  private final boolean average;
  private Tensor x; // (N, C, H, W), saved by forward
  private Tensor y; // (N, C, OH, OW), this forward's output

  Pool2d(Pool2dDesc desc, boolean average) {
    this.desc = desc;
    this.average = average;
  }

  public Pool2dDesc desc() {
    return desc;
  }

  private String type() {
    return average ? "avgpool2d" : "maxpool2d";
  }

  @Override
  public int[] outputShape(int[] in) {
    if (in.length != 3) {
      throw new IllegalArgumentException(type() + " expects (channels, height, width), got " + Shape.str(in));
    }
    int oh = desc.outH(in[1]);
    int ow = desc.outW(in[2]);
    if (oh <= 0 || ow <= 0) {
      throw new IllegalArgumentException(type() + ": window " + desc.kernelH() + "x" + desc.kernelW()
          + " does not fit the input " + in[1] + "x" + in[2] + " with padding " + desc.padH() + "x" + desc.padW());
    }
    return new int[] {in[0], oh, ow};
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    this.x = x;
    int[] s = x.shape();
    y = buffer("y", x.dtype(), new int[] {s[0], s[1], desc.outH(s[2]), desc.outW(s[3])});
    if (average) {
      device.avgPool2dForward(x, y, desc);
    } else {
      device.maxPool2dForward(x, y, desc);
    }
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!needInputGrad) {
      return null;
    }
    Tensor g = gradAs("dyCast", dy, x.dtype()); // mixed precision: the op takes one activation dtype
    Tensor dx = gradBuffer("dx", x.dtype(), x.shape());
    if (average) {
      device.markChannelsLast(dx, x.channelsLast()); // dx in the input's layout (the op reads only dy)
      device.avgPool2dBackward(g, dx, desc);
    } else {
      device.maxPool2dBackward(x, y, g, dx, desc);
    }
    if (g != dy) {
      releaseGrad(g);
    }
    return dx;
  }
}
