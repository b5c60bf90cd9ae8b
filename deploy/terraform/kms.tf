# One customer managed key for what this module stores: the AMP workspace's samples, the SNS
# topic's messages and the workspace's log group. A customer managed key, not the AWS managed
# alias/aws/sns, because AMP publishes to the topic as the aps.amazonaws.com service, and only
# a customer managed key's policy can let that service use the key.
resource "aws_kms_key" "enawatch" {
  description             = "${var.name}: AMP workspace, alert SNS topic and AMP log group"
  deletion_window_in_days = var.kms_deletion_window_days
  enable_key_rotation     = true
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "enawatch" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.enawatch.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is this key alone; the account root's kms:* is AWS's default key policy, without which the key could become unmanageable
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is this key alone; writes are the account root's (IAM policies then decide) and the two AWS services' own, each bound by source conditions
  #checkov:skip=CKV_AWS_356:In a key policy Resource "*" means this key only: no other resource can be named there
  # The account keeps control of its key (otherwise a key can become unmanageable); IAM
  # policies then decide who in the account may use it.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # AMP's Alertmanager publishes to the encrypted topic: SNS needs a data key on its behalf.
  # The source is any AMP workspace of this account in this region, not the workspace's ARN,
  # which would be a cycle (the workspace is encrypted with this key).
  statement {
    sid       = "AmpPublishesToEncryptedTopic"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["aps.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:aps:${local.region}:${local.account_id}:workspace/*"]
    }
  }

  # CloudWatch Logs encrypts the workspace's log group, and only that log group.
  statement {
    sid       = "LogsEncryptsTheWorkspaceLogGroup"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"]
    }
  }
}
