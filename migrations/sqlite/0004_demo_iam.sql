-- The demo IAM estate the iam.* demo tools audit and change (the IAM policy
-- auditor, workflows/examples/iam_policy_auditor.yaml). Each policy is
-- {"default_version": N, "versions": [{"version": N, "document": {...}}]}.
-- World::ensure_schema runs this same file, so every statement must stay
-- idempotent; the tools never create or delete a policy, so running it again
-- never brings back or overwrites anything.
INSERT INTO demo_resources (namespace, key, value, updated_at_ms) VALUES
  ('iam_policy', 'ci-deployer',
   '{"default_version":1,"versions":[{"version":1,"document":{"Version":"2012-10-17","Statement":[{"Sid":"DeployEverything","Effect":"Allow","Action":"*","Resource":"*"}]}}]}',
   0),
  ('iam_policy', 'data-export',
   '{"default_version":1,"versions":[{"version":1,"document":{"Version":"2012-10-17","Statement":[{"Sid":"ExportBucket","Effect":"Allow","Action":"s3:*","Resource":["arn:aws:s3:::exports","arn:aws:s3:::exports/*"]}]}}]}',
   0),
  ('iam_policy', 'read-only-auditor',
   '{"default_version":1,"versions":[{"version":1,"document":{"Version":"2012-10-17","Statement":[{"Sid":"ReadIam","Effect":"Allow","Action":["iam:Get*","iam:List*"],"Resource":"*"}]}}]}',
   0),
  ('iam_policy', 'break-glass-admin',
   '{"default_version":1,"versions":[{"version":1,"document":{"Version":"2012-10-17","Statement":[{"Sid":"BreakGlass","Effect":"Allow","Action":"*","Resource":"*"}]}}]}',
   0)
ON CONFLICT (namespace, key) DO NOTHING;
