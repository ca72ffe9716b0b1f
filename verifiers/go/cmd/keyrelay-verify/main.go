// Reads keys from stdin, one per line, and prints one JSON answer per line:
//
//	keyrelay-verify --jwks FILE | --public-key BASE64 [--revocations FILE] < keys.txt
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	verify "github.com/keyrelay/verify"
)

func main() {
	jwks := flag.String("jwks", "", "a JWK Set file")
	public := flag.String("public-key", "", "one public key, base64")
	list := flag.String("revocations", "", "a revocation list file")
	flag.Parse()
	if err := run(*jwks, *public, *list); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

func run(jwks, public, list string) error {
	var keys verify.Keys
	var err error
	if jwks != "" {
		var data []byte
		if data, err = os.ReadFile(jwks); err == nil {
			keys, err = verify.KeysFromJWKS(data)
		}
	} else {
		keys, err = verify.KeysFromPublicKey(public)
	}
	if err != nil {
		return err
	}
	var revoked *verify.Revocations
	if list != "" {
		data, err := os.ReadFile(list)
		if err != nil {
			return err
		}
		if revoked, err = verify.LoadRevocations(data, keys); err != nil {
			return err
		}
	}
	in := bufio.NewReader(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return nil
		}
		payload, err := verify.Verify(strings.TrimSuffix(line, "\n"), keys, revoked, time.Now())
		var invalid *verify.Invalid
		switch {
		case errors.As(err, &invalid):
			err = out.Encode(map[string]any{"valid": false, "reason": invalid.Reason})
		case err == nil:
			err = out.Encode(struct {
				Valid bool `json:"valid"`
				*verify.Payload
			}{true, payload})
		}
		if err != nil {
			return err
		}
	}
}
