package dev.sparktrainer.docs;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * docs/troubleshooting.md quotes the messages the project raises ({@code **Message:** `...`}); every quote
 * must still occur in the main sources, so the page follows the code.
 */
class TroubleshootingDocTest {

  @Test
  void everyQuotedMessageIsStillRaisedByTheCode() throws Exception {
    String doc = Files.readString(Path.of("..", "docs", "troubleshooting.md"), StandardCharsets.UTF_8);
    List<String> quotes = new ArrayList<>();
    Matcher m = Pattern.compile("\\*\\*Message:\\*\\* `([^`]+)`").matcher(doc);
    while (m.find()) {
      quotes.add(m.group(1));
    }
    assertTrue(quotes.size() >= 20, "expected the page's messages, found " + quotes);
    StringBuilder sources = new StringBuilder();
    try (Stream<Path> files = Files.walk(Path.of("src", "main", "java"))) {
      for (Path f : (Iterable<Path>) files.filter(p -> p.toString().endsWith(".java"))::iterator) {
        sources.append(Files.readString(f, StandardCharsets.UTF_8)).append('\n');
      }
    }
    String code = sources.toString().replace("\\\"", "\"");
    List<String> missing = new ArrayList<>();
    for (String q : quotes) {
      if (!code.contains(q)) {
        missing.add(q);
      }
    }
    assertTrue(missing.isEmpty(), "docs/troubleshooting.md quotes messages the code no longer raises (update the "
        + "page): " + missing);
  }
}
