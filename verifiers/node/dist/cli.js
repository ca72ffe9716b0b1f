// Reads keys from stdin, one per line, and prints one JSON answer per line:
//   node dist/cli.js --jwks FILE | --public-key BASE64 [--revocations FILE] < keys.txt
import { readFileSync } from "node:fs";
import { Invalid, Keys, Revocations, verify } from "./verify.js";
const args = new Map();
for (let i = 2; i + 1 < process.argv.length; i += 2)
    args.set(process.argv[i], process.argv[i + 1]);
const jwks = args.get("--jwks");
const keys = jwks ? Keys.fromJwks(readFileSync(jwks, "utf8")) : Keys.fromPublicKey(args.get("--public-key") ?? "");
const list = args.get("--revocations");
const revocations = list ? Revocations.load(readFileSync(list, "utf8"), keys) : undefined;
const lines = readFileSync(0, "utf8").split("\n").slice(0, -1);
for (const line of lines) {
    try {
        console.log(JSON.stringify({ valid: true, ...verify(line, keys, revocations) }));
    }
    catch (e) {
        if (!(e instanceof Invalid))
            throw e;
        console.log(JSON.stringify({ valid: false, reason: e.reason }));
    }
}
