// Checks keyrelay signed keys offline, with node:crypto only.
//
//   const keys = Keys.fromJwks(fs.readFileSync("jwks.json", "utf8")); // or Keys.fromPublicKey("base64…")
//   const revoked = Revocations.load(fs.readFileSync("revoked.json", "utf8"), keys); // optional
//   const payload = verify(licenseKey, keys, revoked); // throws Invalid with .reason
//
// Reasons, checked in this order: malformed, unknown_key_id, bad_signature, expired, revoked.
import { createHash, createPublicKey, verify as edVerify, type KeyObject } from "node:crypto";

export type Reason = "malformed" | "unknown_key_id" | "bad_signature" | "expired" | "revoked";

export class Invalid extends Error {
  constructor(readonly reason: Reason) {
    super(reason);
  }
}

export interface Payload {
  version: number;
  key_id: string | null;
  grant_id: string;
  entitlement_id: string;
  issued_at: number;
  expires_at: number | null;
  activations_limit: number | null;
}

/** Canonical unpadded base64url, else null. */
function b64url(text: string): Buffer | null {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const raw = Buffer.from(text, "base64url");
  return raw.toString("base64url") === text ? raw : null;
}

function ed25519(x: string): KeyObject {
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
}

/** The public keys a key may be signed with, by key id. */
export class Keys {
  constructor(readonly byKid: Map<string, KeyObject>) {}

  static fromJwks(text: string): Keys {
    const byKid = new Map<string, KeyObject>();
    for (const jwk of JSON.parse(text).keys) {
      if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.kid !== "string") continue;
      if (b64url(jwk.x ?? "")?.length === 32) byKid.set(jwk.kid, ed25519(jwk.x));
    }
    return new Keys(byKid);
  }

  static fromPublicKey(base64: string): Keys {
    const x = Buffer.from(base64, "base64").toString("base64url");
    const thumbprint = `{"crv":"Ed25519","kty":"OKP","x":"${x}"}`;
    const kid = createHash("sha256").update(thumbprint).digest().subarray(0, 8).toString("base64url");
    return new Keys(new Map([[kid, ed25519(x)]]));
  }
}

function signedBy(keys: Iterable<KeyObject>, data: Buffer, signature: Buffer): boolean {
  for (const key of keys) if (edVerify(null, data, key, signature)) return true;
  return false;
}

/** The grants of a signed revocation list (GET /signing-keys/revoked). */
export class Revocations {
  constructor(readonly grants: Set<string>, readonly sequence: number) {}

  static load(text: string, keys: Keys): Revocations {
    const served = JSON.parse(text);
    const data = b64url(served.list ?? "");
    const signature = b64url(served.signature ?? "");
    const candidates = [...keys.byKid].filter(([kid]) => served.kid == null || kid === served.kid);
    if (!data || !signature || !signedBy(candidates.map(([, k]) => k), data, signature)) {
      throw new Error("the revocation list is not signed by a trusted key");
    }
    const listed = JSON.parse(data.toString("utf8"));
    return new Revocations(new Set(listed.revoked.map((r: { grant_id: string }) => r.grant_id)), listed.sequence);
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

export function verify(key: string, keys: Keys, revocations?: Revocations, now = Date.now() / 1000): Payload {
  const raw = b64url(key);
  const version = raw?.[0];
  if (!raw || (version !== 1 && version !== 2)) throw new Invalid("malformed");
  const at = version === 2 ? 9 : 1;
  const payload = raw.subarray(0, raw.length - 64);
  const signature = raw.subarray(raw.length - 64);
  if (raw.length < 64 || payload.length < at + 12) throw new Invalid("malformed");
  const ids: string[] = [];
  let pos = at + 12;
  for (let i = 0; i < 2; i++) {
    if (pos >= payload.length || pos + 1 + payload[pos] > payload.length) throw new Invalid("malformed");
    try {
      ids.push(utf8.decode(payload.subarray(pos + 1, pos + 1 + payload[pos])));
    } catch {
      throw new Invalid("malformed");
    }
    pos += 1 + payload[pos];
  }
  if (pos !== payload.length) throw new Invalid("malformed");
  const kid = version === 2 ? payload.subarray(1, 9).toString("base64url") : null;
  if (kid !== null && !keys.byKid.has(kid)) throw new Invalid("unknown_key_id");
  const candidates = kid !== null ? [keys.byKid.get(kid)!] : keys.byKid.values();
  if (!signedBy(candidates, payload, signature)) throw new Invalid("bad_signature");
  const [issued, expires, activations] = [0, 4, 8].map((i) => payload.readUInt32BE(at + i));
  if (expires !== 0 && now >= expires) throw new Invalid("expired");
  if (revocations?.grants.has(ids[0])) throw new Invalid("revoked");
  return {
    version,
    key_id: kid,
    grant_id: ids[0],
    entitlement_id: ids[1],
    issued_at: issued,
    expires_at: expires || null,
    activations_limit: activations || null,
  };
}
