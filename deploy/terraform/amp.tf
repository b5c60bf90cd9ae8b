# === the workspace ===

locals {
  log_group_name = "/aws/vendedlogs/prometheus/${var.name}"
}

resource "aws_prometheus_workspace" "enawatch" {
  alias       = var.workspace_alias
  kms_key_arn = aws_kms_key.enawatch.arn

  dynamic "logging_configuration" {
    for_each = var.workspace_logging ? [1] : []
    content {
      # AMP wants the log streams' ARN pattern, not the log group's.
      log_group_arn = "${aws_cloudwatch_log_group.amp[0].arn}:*"
    }
  }
}

# The /aws/vendedlogs/ prefix keeps the resource policy CloudWatch Logs writes for vended logs
# small (one entry covers every log group under it).
resource "aws_cloudwatch_log_group" "amp" {
  count             = var.workspace_logging ? 1 : 0
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.enawatch.arn
}

# === rules ===

# The shipped rule file for agents that push (remote write is how samples reach AMP, so
# "agent down" is the age of the last sample, not `up`): AMP's rule groups namespace takes a
# plain Prometheus rule file (deploy/amp/rulegroupsnamespace.yaml carries the same groups for
# the ACK controller).
resource "aws_prometheus_rule_group_namespace" "enawatch" {
  name         = "enawatch"
  workspace_id = aws_prometheus_workspace.enawatch.id
  data         = file("${path.module}/../amp/enawatch-rules.yaml")
}

# === Alertmanager ===

locals {
  # deploy/amp/alertmanagerdefinition.yaml is the ACK controller's resource; AMP's own API
  # takes what its spec.configuration holds. The topic and the SigV4 region are the only
  # values an installation fills in.
  alertmanager_definition = replace(
    replace(
      yamldecode(file("${path.module}/../amp/alertmanagerdefinition.yaml")).spec.configuration,
      local.placeholders.sns_topic_arn,
      aws_sns_topic.alerts.arn,
    ),
    local.placeholders.sns_sigv4_region,
    "region: ${local.region}",
  )
}

resource "aws_prometheus_alert_manager_definition" "enawatch" {
  workspace_id = aws_prometheus_workspace.enawatch.id
  definition   = local.alertmanager_definition

  # AMP checks it may publish when the definition is loaded, and SNS with it the key.
  depends_on = [aws_sns_topic_policy.alerts]
}
