package dev.sparktrainer.spark;

import com.esotericsoftware.kryo.Kryo;
import com.esotericsoftware.kryo.serializers.JavaSerializer;
import org.apache.spark.serializer.KryoRegistrator;

/**
 * Registers the classes spark-trainer ships between driver and tasks, so jobs work with
 * {@code spark.kryo.registrationRequired=true}: set {@code spark.kryo.registrator} to this class (or list
 * it after your own registrator, comma separated).
 */
public final class TrainerKryoRegistrator implements KryoRegistrator {
  @Override
  public void registerClasses(Kryo kryo) {
    // Records keep their final fields: Java serialization is the one that constructs them properly.
    kryo.register(TaskResult.class, new JavaSerializer());
    kryo.register(TaskResult[].class);
    kryo.register(DataStats.class);
    kryo.register(DataStats[].class);
    kryo.register(float[].class);
    kryo.register(int[].class);
    kryo.register(long[].class);
    kryo.register(byte[].class);
    kryo.register(Object[].class);
    kryo.register(scala.Tuple2.class);
    kryo.register(scala.Tuple2[].class);
    kryo.register(org.apache.spark.sql.catalyst.expressions.UnsafeRow.class);
    kryo.register(org.apache.spark.sql.catalyst.InternalRow[].class);
    kryo.register(org.apache.spark.sql.catalyst.expressions.GenericInternalRow.class);
  }
}
