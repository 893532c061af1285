package dev.sparktrainer.spark;

import java.io.Serializable;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.util.ArrayData;

/**
 * What validation needs to know about the rows of one partition (then of all), gathered in one pass of plain
 * Java loops over Spark's binary rows (Spark SQL's higher-order functions would interpret every element).
 * Row layout: 0 = features array&lt;float&gt; (nullable), 1 = label double (classification) or target
 * array&lt;float&gt; (regression).
 */
final class DataStats implements Serializable {
  private static final long serialVersionUID = 1L;
  long rows;
  long nullFeatures;
  int minSize = Integer.MAX_VALUE;
  int maxSize = Integer.MIN_VALUE;
  long nullElements;
  long nonFinite;
  long nullLabels;
  double labelMin = Double.POSITIVE_INFINITY;
  double labelMax = Double.NEGATIVE_INFINITY;
  long nonInteger;
  int targetMinSize = Integer.MAX_VALUE;
  int targetMaxSize = Integer.MIN_VALUE;
  long badTargets;

  void add(InternalRow r, boolean classification) {
    rows++;
    if (r.isNullAt(0)) {
      nullFeatures++;
    } else {
      ArrayData a = r.getArray(0);
      int n = a.numElements();
      minSize = Math.min(minSize, n);
      maxSize = Math.max(maxSize, n);
      boolean hasNull = false;
      boolean bad = false;
      for (int i = 0; i < n; i++) {
        if (a.isNullAt(i)) {
          hasNull = true;
        } else if (!Float.isFinite(a.getFloat(i))) {
          bad = true;
        }
      }
      nullElements += hasNull ? 1 : 0;
      nonFinite += bad ? 1 : 0;
    }
    if (r.isNullAt(1)) {
      nullLabels++;
    } else if (classification) {
      double v = r.getDouble(1);
      if (Double.isNaN(v) || v != Math.floor(v) || Double.isInfinite(v)) {
        nonInteger++;
      } else {
        labelMin = Math.min(labelMin, v);
        labelMax = Math.max(labelMax, v);
      }
    } else {
      ArrayData t = r.getArray(1);
      int n = t.numElements();
      targetMinSize = Math.min(targetMinSize, n);
      targetMaxSize = Math.max(targetMaxSize, n);
      for (int i = 0; i < n; i++) {
        if (t.isNullAt(i) || !Float.isFinite(t.getFloat(i))) {
          badTargets++;
          break;
        }
      }
    }
  }

  DataStats merge(DataStats o) {
    rows += o.rows;
    nullFeatures += o.nullFeatures;
    minSize = Math.min(minSize, o.minSize);
    maxSize = Math.max(maxSize, o.maxSize);
    nullElements += o.nullElements;
    nonFinite += o.nonFinite;
    nullLabels += o.nullLabels;
    labelMin = Math.min(labelMin, o.labelMin);
    labelMax = Math.max(labelMax, o.labelMax);
    nonInteger += o.nonInteger;
    targetMinSize = Math.min(targetMinSize, o.targetMinSize);
    targetMaxSize = Math.max(targetMaxSize, o.targetMaxSize);
    badTargets += o.badTargets;
    return this;
  }
}
