-- The keys Dodo already held for a grant are counted each time its vendor is asked (each one
-- asks anew). No index held rejected keys by grant: every grant claimed for a vendor read
-- every key, and at five million keys the estimate alone made the claim JIT-compile (20 ms a
-- call, whether or not a vendor pool exists). Rejected keys are few, and so are its entries.
CREATE INDEX keys_rejected ON keys (grant_id) WHERE state = 'rejected';
