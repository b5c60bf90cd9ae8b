# Optional (var.grafana): an Amazon Managed Grafana workspace that reads the AMP workspace with
# its own role, and shows the dashboards of deploy/grafana/ as they are shipped.

locals {
  grafana     = var.grafana ? 1 : 0
  grafana_url = var.grafana ? "https://${aws_grafana_workspace.enawatch[0].endpoint}" : null
  # Every dashboard deploy/grafana/ ships, by file name: a new one is picked up without an
  # edit here.
  dashboards = var.grafana ? fileset("${path.module}/../grafana", "*.json") : toset([])
}

resource "aws_iam_role" "grafana" {
  count                = local.grafana
  name                 = "${var.name}-grafana"
  description          = "Amazon Managed Grafana workspace ${var.name} queries AMP workspace ${var.workspace_alias}"
  assume_role_policy   = data.aws_iam_policy_document.grafana_trust.json
  permissions_boundary = var.role_permissions_boundary
}

data "aws_iam_policy_document" "grafana_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["grafana.amazonaws.com"]
    }
    # Only Grafana workspaces of this account and region (confused-deputy guard).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:grafana:${local.region}:${local.account_id}:/workspaces/*"]
    }
  }
}

# Read-only queries of this one workspace: what the Prometheus data source sends.
data "aws_iam_policy_document" "grafana_query" {
  statement {
    actions   = ["aps:QueryMetrics", "aps:GetSeries", "aps:GetLabels", "aps:GetMetricMetadata"]
    resources = [aws_prometheus_workspace.enawatch.arn]
  }
}

resource "aws_iam_role_policy" "grafana_query" {
  count  = local.grafana
  name   = "aps-query"
  role   = aws_iam_role.grafana[0].id
  policy = data.aws_iam_policy_document.grafana_query.json
}

resource "aws_grafana_workspace" "enawatch" {
  count       = local.grafana
  name        = var.name
  description = "enawatch: ENA allowance throttling, from AMP workspace ${var.workspace_alias}"
  # CUSTOMER_MANAGED: the role above, scoped to this workspace, instead of the broad role
  # the service would create.
  account_access_type      = "CURRENT_ACCOUNT"
  permission_type          = "CUSTOMER_MANAGED"
  role_arn                 = aws_iam_role.grafana[0].arn
  authentication_providers = var.grafana_authentication_providers
  data_sources             = ["PROMETHEUS"]
  grafana_version          = var.grafana_version
}

# Terraform's own access to the workspace: a service account and a short-lived token, instead
# of a person's API key.
resource "aws_grafana_workspace_service_account" "terraform" {
  count        = local.grafana
  name         = "terraform"
  grafana_role = "ADMIN"
  workspace_id = aws_grafana_workspace.enawatch[0].id
}

resource "aws_grafana_workspace_service_account_token" "terraform" {
  count              = local.grafana
  name               = "terraform"
  service_account_id = aws_grafana_workspace_service_account.terraform[0].service_account_id
  seconds_to_live    = var.grafana_token_seconds_to_live
  workspace_id       = aws_grafana_workspace.enawatch[0].id
}

# The dashboards pick their data source through a `datasource` variable of type prometheus:
# the default one is chosen, so this one is made the default.
resource "grafana_data_source" "amp" {
  count      = local.grafana
  type       = "prometheus"
  name       = "Amazon Managed Prometheus (${var.workspace_alias})"
  uid        = "enawatch-amp"
  url        = trimsuffix(aws_prometheus_workspace.enawatch.prometheus_endpoint, "/")
  is_default = true

  json_data_encoded = jsonencode({
    httpMethod = "POST"
    # Signed with the workspace's role (aws_iam_role.grafana): no keys stored in Grafana.
    sigV4Auth     = true
    sigV4AuthType = "ec2_iam_role"
    sigV4Region   = local.region
  })
}

resource "grafana_dashboard" "enawatch" {
  for_each    = local.dashboards
  config_json = file("${path.module}/../grafana/${each.value}")
  overwrite   = true

  depends_on = [grafana_data_source.amp]
}
