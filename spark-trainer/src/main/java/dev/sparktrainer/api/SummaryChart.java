package dev.sparktrainer.api;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.XYSeries;
import org.knowm.xchart.style.markers.SeriesMarkers;

/**
 * The PNG chart of a summary's curves, drawn with XChart on the driver (headless AWT): loss per epoch (train
 * and validation) and, for classifiers, accuracy per epoch, side by side. Executors never load this class.
 */
public final class SummaryChart {
  /** Size of one panel in pixels. */
  static final int WIDTH = 640;
  static final int HEIGHT = 420;

  private SummaryChart() {}

  /** The chart as PNG bytes. Needs XChart on the driver's classpath and a JVM with java.desktop. */
  public static byte[] png(TrainingSummary s) throws IOException {
    System.setProperty("java.awt.headless", System.getProperty("java.awt.headless", "true"));
    List<XYChart> charts = new ArrayList<>();
    charts.add(panel(s, "loss", true));
    boolean classifier = s.epochs().stream().anyMatch(e -> !Double.isNaN(e.accuracy()));
    if (classifier) {
      charts.add(panel(s, "accuracy", false));
    }
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    BitmapEncoder.saveBitmap(charts, 1, charts.size(), out, BitmapEncoder.BitmapFormat.PNG);
    return out.toByteArray();
  }

  private static XYChart panel(TrainingSummary s, String what, boolean loss) {
    XYChart c = new XYChartBuilder().width(WIDTH).height(HEIGHT).title(what + " per epoch (" + s.worldSize()
        + " x " + s.device() + ")").xAxisTitle("epoch").yAxisTitle(what).build();
    c.getStyler().setMarkerSize(6);
    c.getStyler().setDecimalPattern(loss ? "0.####" : "0.###");
    c.getStyler().setXAxisDecimalPattern("0");
    c.getStyler().setChartTitleFont(c.getStyler().getChartTitleFont().deriveFont(14f));
    add(c, "train", s, loss, false);
    add(c, "validation", s, loss, true);
    return c;
  }

  private static void add(XYChart c, String name, TrainingSummary s, boolean loss, boolean validation) {
    List<Double> x = new ArrayList<>();
    List<Double> y = new ArrayList<>();
    for (TrainingSummary.Epoch e : s.epochs()) {
      double v = validation ? (loss ? e.validationLoss() : e.validationAccuracy())
          : (loss ? e.loss() : e.accuracy());
      if (Double.isFinite(v)) {
        x.add(e.epoch() + 1.0);
        y.add(v);
      }
    }
    if (!x.isEmpty()) {
      XYSeries series = c.addSeries(name, x, y);
      series.setMarker(SeriesMarkers.CIRCLE);
    }
  }
}
