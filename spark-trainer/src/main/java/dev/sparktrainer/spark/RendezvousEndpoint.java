package dev.sparktrainer.spark;

import java.io.Serializable;

/**
 * Where the ranks meet: the driver's {@link RendezvousServer} address and the fit's rendezvous token
 * (shipped to the tasks inside the task closure, like the ring's secret; it never crosses the socket, which
 * carries only a challenge-response MAC of it).
 */
public record RendezvousEndpoint(String host, int port, String token) implements Serializable {
  @Override
  public String toString() {
    return "RendezvousEndpoint[" + host + ":" + port + "]"; // never print the token
  }
}
