-- Whom each payment E observed paid (C's payee_user_id; none for a withdrawal or a
-- payment C accepted before it named payees). A pattern alert (velocity, structuring)
-- stands for the user's payments around it, so an officer any of them paid may not
-- decide it. Nullable (expand only): the release before it inserts without it.
ALTER TABLE payment_observations ADD COLUMN payee_user_id UUID;
