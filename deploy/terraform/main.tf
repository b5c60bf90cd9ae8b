# The AWS side of enawatch: what the AWS guide's blog builds by hand, from the files the
# repository ships. Nothing under deploy/ is copied here: the rules, the Alertmanager
# definition, the IAM policies and the dashboards are read with file(), by paths relative to
# this module (so it works from any checkout), and only their placeholders are filled in: the
# files the test suite checks are the files AWS gets.
# docs/terraform.md says what each piece is for and how the outputs feed the agent.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # The placeholders the shipped files carry for the values only an installation knows. The
  # test checks each one still occurs in its file: a renamed placeholder would otherwise be
  # left in place silently and AWS would reject (or worse, accept) the result.
  placeholders = {
    workspace_arn    = "arn:aws:aps:REGION:ACCOUNT_ID:workspace/WORKSPACE_ID"
    oidc_arn         = "arn:aws:iam::ACCOUNT_ID:oidc-provider/oidc.eks.REGION.amazonaws.com/id/OIDC_ID"
    oidc_issuer      = "oidc.eks.REGION.amazonaws.com/id/OIDC_ID"
    irsa_subject     = "system:serviceaccount:enawatch:enawatch"
    sns_topic_arn    = "arn:aws:sns:REGION:ACCOUNT_ID:enawatch-alerts"
    sns_sigv4_region = "region: REGION"
  }
}
