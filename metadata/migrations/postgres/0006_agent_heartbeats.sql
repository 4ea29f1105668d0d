-- When each agent last registered or renewed its lease, for operators (`shoal admin agents
-- list --metadata`): `expires_at_ms` alone does not say it, since leases may differ in length.
ALTER TABLE agents ADD COLUMN renewed_at_ms BIGINT NOT NULL DEFAULT 0;
UPDATE agents SET renewed_at_ms = registered_at_ms;
