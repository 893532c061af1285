package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.CommunicatorException;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The host side of the NCCL communicator (no GPU needed): the messages ranks exchange to create it (rank 0's id
 * and the hosts), and how its waits pace their polls (Note [poll pacing]).
 */
class NcclHostSideTest {
  static final String TAG = NcclCommunicator.HOST_TAG;

  @Test
  void readsRankZerosIdAndWhetherAllRanksShareAHost() {
    NcclCommunicator.Rendezvous r = NcclCommunicator.parseRendezvous(
        List.of("QUJD+/==" + TAG + "gpu-node-1", TAG + "gpu-node-1", TAG + "gpu-node-1"), 2, 3);
    assertEquals("QUJD+/==", r.idBase64());
    assertTrue(r.oneHost());
    r = NcclCommunicator.parseRendezvous(List.of("QUJD" + TAG + "gpu-node-1", TAG + "gpu-node-2"), 1, 2);
    assertEquals("QUJD", r.idBase64());
    assertFalse(r.oneHost(), "two hosts");
    r = NcclCommunicator.parseRendezvous(List.of("QUJD" + TAG + "a", TAG), 0, 2);
    assertFalse(r.oneHost(), "a rank without a host name is not known to share the host");
    r = NcclCommunicator.parseRendezvous(List.of("QUJD" + TAG + "a@b"), 0, 1);
    assertTrue(r.oneHost());
  }

  @Test
  void failsWithoutRankZerosId() {
    for (List<String> bad : List.of(List.of(TAG + "a", TAG + "a"), List.of("QUJD" + TAG + "a"),
        Arrays.asList(null, TAG + "a"), List.of("QUJD", TAG + "a"))) {
      CommunicatorException e = assertThrows(CommunicatorException.class,
          () -> NcclCommunicator.parseRendezvous(bad, 1, 2), bad.toString());
      assertTrue(e.getMessage().contains("did not deliver rank 0's NCCL id"), e.getMessage());
    }
  }

  @Test
  void hostNameIsFoundHere() {
    assertFalse(NcclCommunicator.hostName().isEmpty());
  }

  @Test
  void pollsSpinForTheFirst200MicrosecondsThenSleepInStepsOfAtMost50() {
    assertEquals(0, NcclCommunicator.pauseNanos(0));
    assertEquals(0, NcclCommunicator.pauseNanos(199_999));
    assertEquals(2_000, NcclCommunicator.pauseNanos(200_000));
    long last = 0;
    for (long waited = 200_000; waited < 10_000_000; waited += 10_000) {
      long p = NcclCommunicator.pauseNanos(waited);
      assertTrue(p >= last && p > 0 && p <= 50_000, waited + " -> " + p);
      last = p;
    }
    assertEquals(50_000, NcclCommunicator.pauseNanos(60_000_000_000L), "a long wait sleeps 50 us at a time");
  }
}
