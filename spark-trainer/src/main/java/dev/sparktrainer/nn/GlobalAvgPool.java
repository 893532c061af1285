package dev.sparktrainer.nn;

import dev.sparktrainer.engine.Pool2dDesc;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;

/**
 * The mean of each channel over all positions, as torchvision's nn.AdaptiveAvgPool2d((1, 1)):
 * (N, C, H, W) -> (N, C, 1, 1); put a flatten layer after it before a linear layer, as torchvision does.
 */
public final class GlobalAvgPool extends Layer {
  private Pool2dDesc desc;
  private int[] inShape;
  private dev.sparktrainer.engine.DType inDType = dev.sparktrainer.engine.DType.FLOAT32;
  private boolean inChannelsLast;

  @Override
  public int[] outputShape(int[] in) {
    if (in.length != 3) {
      throw new IllegalArgumentException("globalavgpool expects (channels, height, width), got " + Shape.str(in));
    }
    return new int[] {in[0], 1, 1};
  }

  @Override
  public Tensor forward(Tensor x, Context ctx) {
    inShape = x.shape();
    if (desc == null || desc.kernelH() != inShape[2] || desc.kernelW() != inShape[3]) {
      desc = new Pool2dDesc(inShape[2], inShape[3], 1, 1, 0, 0);
    }
    inDType = x.dtype();
    inChannelsLast = x.channelsLast();
    Tensor y = buffer("y", x.dtype(), new int[] {inShape[0], inShape[1], 1, 1});
    device.avgPool2dForward(x, y, desc);
    return y;
  }

  @Override
  public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
    if (!needInputGrad) {
      return null;
    }
    Tensor g = gradAs("dyCast", dy, inDType); // mixed precision: the op takes one activation dtype
    Tensor dx = gradBuffer("dx", inDType, inShape);
    device.markChannelsLast(dx, inChannelsLast); // dx in the input's layout (the op reads only dy)
    device.avgPool2dBackward(g, dx, desc);
    if (g != dy) {
      releaseGrad(g);
    }
    return dx;
  }
}
