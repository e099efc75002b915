-- A driving licence number is 5 to 20 letters and digits with a `-` allowed between two
-- of them: up to 39 characters as written. The check counted the dashes, so a longer
-- number as written failed on it (a 500). The new one bounds what the rule allows and
-- takes every row written before (5 to 20 characters), so it is validated, and the
-- release before still writes what passes it; the rule's lower bound stays the app's.
ALTER TABLE kyc_submissions DROP CONSTRAINT kyc_submissions_document_number_check;
ALTER TABLE kyc_submissions ADD CONSTRAINT kyc_submissions_document_number_length
    CHECK (length(document_number) BETWEEN 5 AND 39
           AND length(replace(document_number, '-', '')) <= 20) NOT VALID;
ALTER TABLE kyc_submissions VALIDATE CONSTRAINT kyc_submissions_document_number_length;
