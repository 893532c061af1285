package dev.sparktrainer.spark;

import java.io.Serializable;

/**
 * Where the ranks report progress: the driver's {@link ProgressServer} address and the job's progress token
 * (shipped to the tasks inside the task closure, like the ring's secret; it never crosses the progress
 * socket, which carries only a challenge-response MAC of it).
 */
public record ProgressEndpoint(String host, int port, String token) implements Serializable {
  @Override
  public String toString() {
    return "ProgressEndpoint[" + host + ":" + port + "]"; // never print the token
  }
}
