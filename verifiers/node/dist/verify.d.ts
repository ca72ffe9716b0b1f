import { type KeyObject } from "node:crypto";
export type Reason = "malformed" | "unknown_key_id" | "bad_signature" | "expired" | "revoked";
export declare class Invalid extends Error {
    readonly reason: Reason;
    constructor(reason: Reason);
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
/** The public keys a key may be signed with, by key id. */
export declare class Keys {
    readonly byKid: Map<string, KeyObject>;
    constructor(byKid: Map<string, KeyObject>);
    static fromJwks(text: string): Keys;
    static fromPublicKey(base64: string): Keys;
}
/** The grants of a signed revocation list (GET /signing-keys/revoked). */
export declare class Revocations {
    readonly grants: Set<string>;
    readonly sequence: number;
    constructor(grants: Set<string>, sequence: number);
    static load(text: string, keys: Keys): Revocations;
}
export declare function verify(key: string, keys: Keys, revocations?: Revocations, now?: number): Payload;
