// Package verify checks keyrelay signed keys offline, with the standard library only.
//
//	keys, err := verify.KeysFromJWKS(jwksJSON) // or verify.KeysFromPublicKey("base64…")
//	revoked, err := verify.LoadRevocations(listJSON, keys) // optional
//	payload, err := verify.Verify(licenseKey, keys, revoked, time.Now())
//
// A refused key gives an *Invalid whose Reason is, in the order checked: malformed,
// unknown_key_id, bad_signature, expired, revoked.
package verify

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Invalid says why a key is refused.
type Invalid struct{ Reason string }

func (e *Invalid) Error() string { return "invalid key: " + e.Reason }

// Payload is what a valid key says.
type Payload struct {
	Version          int     `json:"version"`
	KeyID            *string `json:"key_id"`
	GrantID          string  `json:"grant_id"`
	EntitlementID    string  `json:"entitlement_id"`
	IssuedAt         uint32  `json:"issued_at"`
	ExpiresAt        *uint32 `json:"expires_at"`
	ActivationsLimit *uint32 `json:"activations_limit"`
}

// Keys are the public keys a key may be signed with, by key id.
type Keys map[string]ed25519.PublicKey

var b64url = base64.RawURLEncoding.Strict()

// canonical decodes unpadded base64url, refusing any other spelling of the same bytes.
func canonical(text string) ([]byte, bool) {
	raw, err := b64url.DecodeString(text)
	return raw, err == nil && b64url.EncodeToString(raw) == text
}

// KeysFromJWKS reads the Ed25519 keys with a kid from a JWK Set.
func KeysFromJWKS(data []byte) (Keys, error) {
	var set struct {
		Keys []struct{ Kty, Crv, X, Kid string }
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	keys := Keys{}
	for _, jwk := range set.Keys {
		if x, ok := canonical(jwk.X); ok && jwk.Kty == "OKP" && jwk.Crv == "Ed25519" && jwk.Kid != "" && len(x) == ed25519.PublicKeySize {
			keys[jwk.Kid] = x
		}
	}
	return keys, nil
}

// KeysFromPublicKey takes one public key (base64 of 32 bytes), under the id derived from it.
func KeysFromPublicKey(b64 string) (Keys, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("the public key is not base64 of 32 bytes")
	}
	thumbprint := fmt.Sprintf(`{"crv":"Ed25519","kty":"OKP","x":"%s"}`, b64url.EncodeToString(raw))
	digest := sha256.Sum256([]byte(thumbprint))
	return Keys{b64url.EncodeToString(digest[:8]): raw}, nil
}

// Revocations are the grants on a signed revocation list (GET /signing-keys/revoked).
type Revocations struct {
	Grants   map[string]bool
	Sequence int64
}

// LoadRevocations checks the list's signature against keys and reads it.
func LoadRevocations(data []byte, keys Keys) (*Revocations, error) {
	var served struct {
		List, Signature string
		Kid             *string
	}
	if err := json.Unmarshal(data, &served); err != nil {
		return nil, fmt.Errorf("not a revocation list: %w", err)
	}
	list, okList := canonical(served.List)
	signature, okSig := canonical(served.Signature)
	signed := false
	for kid, key := range keys {
		if okList && okSig && (served.Kid == nil || *served.Kid == kid) && len(signature) == ed25519.SignatureSize && ed25519.Verify(key, list, signature) {
			signed = true
		}
	}
	if !signed {
		return nil, errors.New("the revocation list is not signed by a trusted key")
	}
	var listed struct {
		Sequence int64
		Revoked  []struct {
			GrantID string `json:"grant_id"`
		}
	}
	if err := json.Unmarshal(list, &listed); err != nil {
		return nil, fmt.Errorf("the revocation list does not read: %w", err)
	}
	out := &Revocations{Grants: map[string]bool{}, Sequence: listed.Sequence}
	for _, r := range listed.Revoked {
		out.Grants[r.GrantID] = true
	}
	return out, nil
}

func optional(n uint32) *uint32 {
	if n == 0 {
		return nil
	}
	return &n
}

// Verify checks key against keys, then its expiry at now, then revoked (which may be nil).
func Verify(key string, keys Keys, revoked *Revocations, now time.Time) (*Payload, error) {
	malformed := &Invalid{"malformed"}
	raw, ok := canonical(key)
	if !ok || len(raw) < 1 || (raw[0] != 1 && raw[0] != 2) {
		return nil, malformed
	}
	at := 1
	if raw[0] == 2 {
		at = 9
	}
	if len(raw) < ed25519.SignatureSize+at+12 {
		return nil, malformed
	}
	payload, signature := raw[:len(raw)-ed25519.SignatureSize], raw[len(raw)-ed25519.SignatureSize:]
	var ids [2]string
	pos := at + 12
	for i := range ids {
		if pos >= len(payload) || pos+1+int(payload[pos]) > len(payload) {
			return nil, malformed
		}
		id := payload[pos+1 : pos+1+int(payload[pos])]
		if !utf8.Valid(id) {
			return nil, malformed
		}
		ids[i] = string(id)
		pos += 1 + int(payload[pos])
	}
	if pos != len(payload) {
		return nil, malformed
	}
	var kid *string
	candidates := keys
	if raw[0] == 2 {
		id := b64url.EncodeToString(payload[1:9])
		kid = &id
		key, found := keys[id]
		if !found {
			return nil, &Invalid{"unknown_key_id"}
		}
		candidates = Keys{id: key}
	}
	signed := false
	for _, k := range candidates {
		signed = signed || ed25519.Verify(k, payload, signature)
	}
	if !signed {
		return nil, &Invalid{"bad_signature"}
	}
	number := func(i int) uint32 { return binary.BigEndian.Uint32(payload[at+i:]) }
	if expires := number(4); expires != 0 && now.Unix() >= int64(expires) {
		return nil, &Invalid{"expired"}
	}
	if revoked != nil && revoked.Grants[ids[0]] {
		return nil, &Invalid{"revoked"}
	}
	return &Payload{int(raw[0]), kid, ids[0], ids[1], number(0), optional(number(4)), optional(number(8))}, nil
}
