-- A payment an AML review failed tells its payer "declined after a compliance review",
-- never the officer's note (which C used to copy from E's decision): telling the payer
-- why a review found against them would tip them off. Payments failed before keep
-- their code and get the same words. (Only the reason changes: the status triggers do
-- not fire.)
UPDATE payments SET failure_reason = 'declined after a compliance review'
WHERE failure_code = 'AML_FLAGGED';
