-- Who froze a frozen wallet: its owner ('owner') or staff ('staff'). An owner may lift
-- only a freeze of their own; a staff freeze is lifted by staff, or freezing a wallet
-- would stop nobody who owns it.
--
-- Expand only: nullable, so the release before this one keeps writing wallets. A
-- frozen wallet with no value was frozen before freezes were attributed (or by that
-- release) and counts as a staff freeze: nobody can show its owner froze it.
ALTER TABLE wallets
    ADD COLUMN frozen_by TEXT CHECK (frozen_by IN ('owner', 'staff'));
