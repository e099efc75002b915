-- When a held payment was released to PENDING (by staff, or by E's aml.cleared). The
-- sweeper's deadline runs from here, so a hold reviewed for longer than the deadline is
-- not failed as unprocessed the moment it is released. Nullable (expand only): NULL
-- means PENDING since acceptance (created_at).
ALTER TABLE payments ADD COLUMN pending_since TIMESTAMPTZ;
