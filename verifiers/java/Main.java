import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.HashMap;
import java.util.Map;

/** Reads keys from stdin, one per line, and prints one JSON answer per line:
 *  java Main --jwks FILE | --public-key BASE64 [--revocations FILE] &lt; keys.txt */
public final class Main {
    public static void main(String[] argv) throws Exception {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) args.put(argv[i], argv[i + 1]);
        KeyrelayVerify.Keys keys = args.containsKey("--jwks")
                ? KeyrelayVerify.Keys.fromJwks(Files.readString(Path.of(args.get("--jwks"))))
                : KeyrelayVerify.Keys.fromPublicKey(args.get("--public-key"));
        KeyrelayVerify.Revocations revoked = args.containsKey("--revocations")
                ? KeyrelayVerify.Revocations.load(Files.readString(Path.of(args.get("--revocations"))), keys)
                : null;
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        String[] lines = new String(System.in.readAllBytes(), StandardCharsets.UTF_8).split("\n", -1);
        for (int n = 0; n < lines.length - 1; n++) {
            try {
                KeyrelayVerify.Payload p = KeyrelayVerify.verify(lines[n], keys, revoked, Instant.now().getEpochSecond());
                out.println("{\"valid\":true,\"version\":" + p.version() + ",\"key_id\":" + quote(p.keyId())
                        + ",\"grant_id\":" + quote(p.grantId()) + ",\"entitlement_id\":" + quote(p.entitlementId())
                        + ",\"issued_at\":" + p.issuedAt() + ",\"expires_at\":" + p.expiresAt()
                        + ",\"activations_limit\":" + p.activationsLimit() + "}");
            } catch (KeyrelayVerify.Invalid e) {
                out.println("{\"valid\":false,\"reason\":\"" + e.reason + "\"}");
            }
        }
    }

    static String quote(String s) {
        if (s == null) return "null";
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') out.append('\\').append(c);
            else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }
}
