package dev.sparktrainer.nn;

import java.util.List;

/**
 * Ready-made {@link ModelSpec}s: the Fashion-MNIST CNN of the benchmark suite, and ResNet-18 / ResNet-50 in
 * torchvision's layout (v1.5: the stride of a bottleneck is on its 3x3 convolution), channels-first, so they
 * can be compared with torchvision.models.resnet18/50 layer by layer: the same layers in the same order, the
 * same parameter counts (11,689,512 and 25,557,032 for 1000 classes) and the same initialisation
 * (convolutions kaiming_normal_ fan_out, batch norm weight 1 and bias 0, the final linear layer PyTorch's
 * default). Names differ: torchvision's {@code layer1.0.conv1.weight} is here
 * {@code 4.residual.main.0.conv2d.weight} (a block is a residual layer followed by its ReLU). Batch norm is
 * per rank as in DDP; {@code ModelZoo.resnet50(1000).withSyncBatchNorm()} (JSON: {@code "syncBatchNorm": true})
 * synchronises it across ranks as torch.nn.SyncBatchNorm.convert_sync_batchnorm would.
 */
public final class ModelZoo {
  private ModelZoo() {}

  /**
   * The Fashion-MNIST CNN: input [1, 28, 28]; conv3x3(32, padding 1) - relu - maxpool 2 - conv3x3(64,
   * padding 1) - relu - maxpool 2 - flatten - linear 128 - relu - linear 10 (421,642 parameters).
   */
  public static ModelSpec fashionMnistCnn() {
    return ModelSpec.builder().input(1, 28, 28)
        .conv2d(32, 3, 1, 1).relu().maxPool2d(2, 2, 0)
        .conv2d(64, 3, 1, 1).relu().maxPool2d(2, 2, 0)
        .flatten().linear(128).relu().linear(10)
        .build();
  }

  /** torchvision.models.resnet18(num_classes=classes) for 3x224x224 input. */
  public static ModelSpec resnet18(int classes) {
    return resnet18(classes, 3, 224, 224);
  }

  /** ResNet-18 for another input size (e.g. 3x32x32 for tests; the stem still downsamples by 4). */
  public static ModelSpec resnet18(int classes, int... input) {
    return resnet(new int[] {2, 2, 2, 2}, false, classes, input);
  }

  /** torchvision.models.resnet50(num_classes=classes) for 3x224x224 input. */
  public static ModelSpec resnet50(int classes) {
    return resnet50(classes, 3, 224, 224);
  }

  /** ResNet-50 for another input size. */
  public static ModelSpec resnet50(int classes, int... input) {
    return resnet(new int[] {3, 4, 6, 3}, true, classes, input);
  }

  private static ModelSpec.Conv conv(int filters, int kernel, int stride) {
    return ModelSpec.Conv.of(filters, kernel, stride, kernel / 2).withInit(Conv2d.Init.KAIMING_NORMAL);
  }

  /**
   * The stem (conv7x7/2 - bn - relu - maxpool3x3/2), four stages of blocks (widths 64, 128, 256, 512; the
   * first block of stages 2-4 has stride 2), global average pool, flatten, linear.
   */
  static ModelSpec resnet(int[] blocks, boolean bottleneck, int classes, int[] input) {
    ModelSpec.Builder b = ModelSpec.builder().input(input)
        .conv2d(conv(64, 7, 2), false).batchNorm2d().relu().maxPool2d(3, 2, 1);
    int inChannels = 64;
    int[] widths = {64, 128, 256, 512};
    for (int stage = 0; stage < 4; stage++) {
      int width = widths[stage];
      int out = bottleneck ? width * 4 : width;
      for (int i = 0; i < blocks[stage]; i++) {
        int stride = stage > 0 && i == 0 ? 2 : 1;
        ModelSpec.Builder main = ModelSpec.builder();
        if (bottleneck) {
          main.conv2d(conv(width, 1, 1), false).batchNorm2d().relu()
              .conv2d(conv(width, 3, stride), false).batchNorm2d().relu()
              .conv2d(conv(out, 1, 1), false).batchNorm2d();
        } else {
          main.conv2d(conv(width, 3, stride), false).batchNorm2d().relu()
              .conv2d(conv(width, 3, 1), false).batchNorm2d();
        }
        List<ModelSpec.LayerSpec> shortcut = stride != 1 || inChannels != out
            ? ModelSpec.builder().conv2d(conv(out, 1, stride), false).batchNorm2d().layerList()
            : List.of();
        b.residual(main.layerList(), shortcut).relu();
        inChannels = out;
      }
    }
    return b.globalAvgPool().flatten().linear(classes).build();
  }
}
