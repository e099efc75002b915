-- Every approval asks whether another account holds the same document (type and
-- number) or a verification on it was revoked: found by index, not by reading every
-- submission while the document's lock is held.
CREATE INDEX kyc_submissions_document_idx ON kyc_submissions (document_type, document_number);
