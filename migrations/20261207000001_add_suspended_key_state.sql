-- A delivered key whose grant Dodo revoked for a reason that can reverse
-- (`subscription_on_hold`, `license_key_disabled`). Added on its own: a new enum value can be
-- used only once the transaction that added it has committed.
ALTER TYPE key_state ADD VALUE IF NOT EXISTS 'suspended' AFTER 'delivered';
