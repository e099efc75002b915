-- Whom a payment pays, as B said at accept: the owner of a transfer's destination
-- wallet, the payer of a deposit, nobody for a withdrawal. Staff decisions (here, and
-- E's through the events) must know both ends, so nobody decides on money paid to them.
-- Nullable (expand only): payments accepted before this column have none, and C asks
-- B for their payee when it needs it.
ALTER TABLE payments ADD COLUMN payee_user_id UUID;
