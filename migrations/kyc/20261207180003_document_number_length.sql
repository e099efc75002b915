-- A driving licence number is 5 to 20 letters and digits with a `-` allowed between two
-- of them: up to 39 characters as written. The check counted the dashes, so a longer
-- number as written failed on it (a 500); it now counts what the rule counts. NOT VALID:
-- the rows written before are not read again (a number of dashes alone was taken then).
-- The release before writes 20 characters at most, which pass.
ALTER TABLE kyc_submissions DROP CONSTRAINT IF EXISTS kyc_submissions_document_number_check;
ALTER TABLE kyc_submissions ADD CONSTRAINT kyc_submissions_document_number_length
    CHECK (length(replace(document_number, '-', '')) BETWEEN 5 AND 20
           AND length(document_number) <= 39) NOT VALID;
