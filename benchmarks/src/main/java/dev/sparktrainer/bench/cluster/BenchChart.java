package dev.sparktrainer.bench.cluster;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.CategoryChart;
import org.knowm.xchart.CategoryChartBuilder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.internal.chartpart.Chart;
import org.knowm.xchart.style.markers.SeriesMarkers;

/**
 * The report's PNG, drawn with XChart (the library the training summary's chart uses), headless: one bar
 * panel per benchmark (samples/s at each W; a failed run is a missing bar) and one panel of scaling
 * efficiency samples/s(W) / (W x samples/s(1)) against W, with the ideal line at 1.
 */
public final class BenchChart {
  static final int WIDTH = 460;
  static final int HEIGHT = 380;

  private BenchChart() {}

  /** The chart as PNG bytes. */
  public static byte[] png(List<Map<String, Object>> entries, String title) throws IOException {
    System.setProperty("java.awt.headless", System.getProperty("java.awt.headless", "true"));
    Set<String> benches = new LinkedHashSet<>();
    entries.forEach(e -> benches.add((String) e.get("benchmark")));
    List<Chart<?, ?>> panels = new ArrayList<>();
    for (String b : benches) {
      panels.add(throughput(entries, b));
    }
    panels.add(scaling(entries, benches, title));
    int cols = Math.min(panels.size(), 4);
    int rows = (panels.size() + cols - 1) / cols;
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    BitmapEncoder.saveBitmap(panels, rows, cols, out, BitmapEncoder.BitmapFormat.PNG);
    return out.toByteArray();
  }

  private static CategoryChart throughput(List<Map<String, Object>> entries, String bench) {
    List<String> xs = new ArrayList<>();
    List<Double> ys = new ArrayList<>();
    String card = "";
    for (Map<String, Object> e : entries) {
      if (bench.equals(e.get("benchmark"))) {
        xs.add("W=" + e.get("world"));
        ys.add(e.get("ours") instanceof Double v ? v : 0.0);
        card = e.get("card") == null ? card : String.valueOf(e.get("card"));
      }
    }
    CategoryChart c = new CategoryChartBuilder().width(WIDTH).height(HEIGHT)
        .title(bench + " (" + card + ")").xAxisTitle("workers (W)").yAxisTitle("samples/s").build();
    c.getStyler().setLegendVisible(false);
    c.getStyler().setChartTitleFont(c.getStyler().getChartTitleFont().deriveFont(13f));
    c.getStyler().setAxisTitleFont(c.getStyler().getAxisTitleFont().deriveFont(10f));
    c.getStyler().setLabelsVisible(true);
    c.getStyler().setDecimalPattern("#,###.#");
    c.addSeries("samples/s", xs, ys);
    return c;
  }

  private static XYChart scaling(List<Map<String, Object>> entries, Set<String> benches, String title) {
    XYChart c = new XYChartBuilder().width(WIDTH).height(HEIGHT).title("scaling vs W = 1")
        .xAxisTitle("workers (W); " + title).yAxisTitle("samples/s(W) / (W x samples/s(1))").build();
    c.getStyler().setYAxisMin(0.0);
    c.getStyler().setYAxisMax(1.2);
    c.getStyler().setXAxisDecimalPattern("0");
    c.getStyler().setDecimalPattern("0.00");
    c.getStyler().setChartTitleFont(c.getStyler().getChartTitleFont().deriveFont(13f));
    c.getStyler().setAxisTitleFont(c.getStyler().getAxisTitleFont().deriveFont(10f));
    double maxW = 1;
    for (String b : benches) {
      Double one = null;
      for (Map<String, Object> e : entries) {
        if (b.equals(e.get("benchmark")) && (Integer) e.get("world") == 1 && e.get("ours") instanceof Double v) {
          one = v;
        }
      }
      List<Double> x = new ArrayList<>();
      List<Double> y = new ArrayList<>();
      for (Map<String, Object> e : entries) {
        int w = (Integer) e.get("world");
        maxW = Math.max(maxW, w);
        if (one != null && one > 0 && b.equals(e.get("benchmark")) && e.get("ours") instanceof Double v) {
          x.add((double) w);
          y.add(v / (w * one));
        }
      }
      if (!x.isEmpty()) {
        c.addSeries(b, x, y).setMarker(SeriesMarkers.CIRCLE);
      }
    }
    c.addSeries("ideal", new double[] {1, Math.max(2, maxW)}, new double[] {1, 1}).setMarker(SeriesMarkers.NONE);
    return c;
  }
}
