import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.X509EncodedKeySpec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Checks keyrelay signed keys offline, with the JDK's Ed25519 (Java 17 or later) only.
 *
 * <pre>
 * var keys = KeyrelayVerify.Keys.fromJwks(Files.readString(Path.of("jwks.json"))); // or Keys.fromPublicKey("base64…")
 * var revoked = KeyrelayVerify.Revocations.load(Files.readString(Path.of("revoked.json")), keys); // optional
 * var payload = KeyrelayVerify.verify(licenseKey, keys, revoked, Instant.now().getEpochSecond());
 * </pre>
 *
 * A refused key throws {@link Invalid} with a reason, in the order checked: malformed,
 * unknown_key_id, bad_signature, expired, revoked.
 */
public final class KeyrelayVerify {
    private KeyrelayVerify() {}

    public static final class Invalid extends Exception {
        public final String reason;

        Invalid(String reason) {
            super("invalid key: " + reason);
            this.reason = reason;
        }
    }

    /** What a valid key says; absent fields are null. */
    public record Payload(int version, String keyId, String grantId, String entitlementId,
            long issuedAt, Long expiresAt, Long activationsLimit) {}

    private static final Base64.Decoder B64URL = Base64.getUrlDecoder();
    private static final Base64.Encoder TO_B64URL = Base64.getUrlEncoder().withoutPadding();
    /** The DER prefix of an X.509 Ed25519 public key (RFC 8410), before its 32 bytes. */
    private static final byte[] X509_PREFIX = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};

    /** Canonical unpadded base64url, else null. */
    static byte[] b64url(String text) {
        try {
            byte[] raw = B64URL.decode(text);
            return TO_B64URL.encodeToString(raw).equals(text) ? raw : null;
        } catch (IllegalArgumentException e) {
            return null;
        }
    }

    static PublicKey ed25519(byte[] raw) throws GeneralSecurityException {
        byte[] der = Arrays.copyOf(X509_PREFIX, X509_PREFIX.length + raw.length);
        System.arraycopy(raw, 0, der, X509_PREFIX.length, raw.length);
        return KeyFactory.getInstance("Ed25519").generatePublic(new X509EncodedKeySpec(der));
    }

    static boolean signedBy(Iterable<PublicKey> keys, byte[] data, byte[] signature) throws GeneralSecurityException {
        for (PublicKey key : keys) {
            Signature check = Signature.getInstance("Ed25519");
            check.initVerify(key);
            check.update(data);
            try {
                if (check.verify(signature)) return true;
            } catch (java.security.SignatureException e) {
                // A signature of the wrong shape: not this key's.
            }
        }
        return false;
    }

    /** The public keys a key may be signed with, by key id. */
    public static final class Keys {
        final Map<String, PublicKey> byKid = new LinkedHashMap<>();

        public static Keys fromJwks(String json) throws GeneralSecurityException {
            Keys keys = new Keys();
            for (Object o : (List<?>) ((Map<?, ?>) Json.parse(json)).get("keys")) {
                Map<?, ?> jwk = (Map<?, ?>) o;
                byte[] x = jwk.get("x") instanceof String s ? b64url(s) : null;
                if ("OKP".equals(jwk.get("kty")) && "Ed25519".equals(jwk.get("crv"))
                        && jwk.get("kid") instanceof String kid && x != null && x.length == 32) {
                    keys.byKid.put(kid, ed25519(x));
                }
            }
            return keys;
        }

        public static Keys fromPublicKey(String base64) throws GeneralSecurityException {
            byte[] raw = Base64.getDecoder().decode(base64);
            String thumbprint = "{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"" + TO_B64URL.encodeToString(raw) + "\"}";
            byte[] digest = MessageDigest.getInstance("SHA-256").digest(thumbprint.getBytes(StandardCharsets.UTF_8));
            Keys keys = new Keys();
            keys.byKid.put(TO_B64URL.encodeToString(Arrays.copyOf(digest, 8)), ed25519(raw));
            return keys;
        }
    }

    /** The grants on a signed revocation list (GET /signing-keys/revoked). */
    public static final class Revocations {
        public final Set<String> grants = new HashSet<>();
        public long sequence;

        public static Revocations load(String json, Keys keys) throws GeneralSecurityException {
            Map<?, ?> served = (Map<?, ?>) Json.parse(json);
            byte[] list = served.get("list") instanceof String s ? b64url(s) : null;
            byte[] signature = served.get("signature") instanceof String s ? b64url(s) : null;
            Object kid = served.get("kid");
            List<PublicKey> candidates = new ArrayList<>();
            keys.byKid.forEach((id, key) -> {
                if (kid == null || kid.equals(id)) candidates.add(key);
            });
            if (list == null || signature == null || !signedBy(candidates, list, signature)) {
                throw new GeneralSecurityException("the revocation list is not signed by a trusted key");
            }
            Map<?, ?> listed = (Map<?, ?>) Json.parse(new String(list, StandardCharsets.UTF_8));
            Revocations out = new Revocations();
            out.sequence = ((Number) listed.get("sequence")).longValue();
            for (Object entry : (List<?>) listed.get("revoked")) {
                out.grants.add((String) ((Map<?, ?>) entry).get("grant_id"));
            }
            return out;
        }
    }

    /** Checks the key against keys, then its expiry at now (Unix seconds), then revoked (may be null). */
    public static Payload verify(String key, Keys keys, Revocations revoked, long now)
            throws Invalid, GeneralSecurityException {
        byte[] raw = b64url(key);
        if (raw == null || raw.length < 1 || (raw[0] != 1 && raw[0] != 2)) throw new Invalid("malformed");
        int version = raw[0], at = version == 2 ? 9 : 1;
        if (raw.length < 64 + at + 12) throw new Invalid("malformed");
        byte[] payload = Arrays.copyOf(raw, raw.length - 64);
        byte[] signature = Arrays.copyOfRange(raw, raw.length - 64, raw.length);
        String[] ids = new String[2];
        int pos = at + 12;
        for (int i = 0; i < 2; i++) {
            if (pos >= payload.length) throw new Invalid("malformed");
            int len = payload[pos] & 0xff;
            if (pos + 1 + len > payload.length) throw new Invalid("malformed");
            try {
                ids[i] = StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT)
                        .decode(ByteBuffer.wrap(payload, pos + 1, len)).toString();
            } catch (CharacterCodingException e) {
                throw new Invalid("malformed");
            }
            pos += 1 + len;
        }
        if (pos != payload.length) throw new Invalid("malformed");
        String kid = version == 2 ? TO_B64URL.encodeToString(Arrays.copyOfRange(payload, 1, 9)) : null;
        if (kid != null && !keys.byKid.containsKey(kid)) throw new Invalid("unknown_key_id");
        Iterable<PublicKey> candidates = kid != null ? List.of(keys.byKid.get(kid)) : keys.byKid.values();
        if (!signedBy(candidates, payload, signature)) throw new Invalid("bad_signature");
        ByteBuffer numbers = ByteBuffer.wrap(payload, at, 12);
        long issued = Integer.toUnsignedLong(numbers.getInt());
        long expires = Integer.toUnsignedLong(numbers.getInt());
        long activations = Integer.toUnsignedLong(numbers.getInt());
        if (expires != 0 && now >= expires) throw new Invalid("expired");
        if (revoked != null && revoked.grants.contains(ids[0])) throw new Invalid("revoked");
        return new Payload(version, kid, ids[0], ids[1], issued,
                expires == 0 ? null : expires, activations == 0 ? null : activations);
    }

    /** Just enough JSON for a JWK Set and a revocation list: objects, arrays, strings, numbers, literals. */
    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String text) {
            Json json = new Json(text);
            Object value = json.value();
            json.space();
            if (json.i != text.length()) throw new IllegalArgumentException("JSON: text after the value");
            return value;
        }

        private void space() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) i++;
        }

        private Object value() {
            space();
            if (i >= s.length()) throw new IllegalArgumentException("JSON: ends early");
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> map = new LinkedHashMap<>();
                i++;
                space();
                if (s.charAt(i) == '}') { i++; return map; }
                do {
                    space();
                    String name = string();
                    space();
                    expect(':');
                    map.put(name, value());
                    space();
                } while (s.charAt(i++) == ',');
                if (s.charAt(i - 1) != '}') throw new IllegalArgumentException("JSON: expected }");
                return map;
            }
            if (c == '[') {
                List<Object> list = new ArrayList<>();
                i++;
                space();
                if (s.charAt(i) == ']') { i++; return list; }
                do {
                    list.add(value());
                    space();
                } while (s.charAt(i++) == ',');
                if (s.charAt(i - 1) != ']') throw new IllegalArgumentException("JSON: expected ]");
                return list;
            }
            if (c == '"') return string();
            for (String literal : new String[] {"true", "false", "null"}) {
                if (s.startsWith(literal, i)) {
                    i += literal.length();
                    return literal.equals("null") ? null : Boolean.valueOf(literal);
                }
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) i++;
            return Double.valueOf(s.substring(start, i));
        }

        private void expect(char c) {
            if (i >= s.length() || s.charAt(i++) != c) throw new IllegalArgumentException("JSON: expected " + c);
        }

        private String string() {
            expect('"');
            StringBuilder out = new StringBuilder();
            while (true) {
                char c = s.charAt(i++);
                if (c == '"') return out.toString();
                if (c != '\\') { out.append(c); continue; }
                char e = s.charAt(i++);
                switch (e) {
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> { out.append((char) Integer.parseInt(s.substring(i, i + 4), 16)); i += 4; }
                    default -> out.append(e);
                }
            }
        }
    }
}
