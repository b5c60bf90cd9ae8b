provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "app.kubernetes.io/part-of" = "enawatch" }, var.tags)
  }
}

# The Grafana provider talks to the workspace this module creates, with a token this module
# creates. Configuring a provider from resources of the same configuration works for create
# and update; when the workspace itself must be replaced, apply in two steps
# (docs/terraform.md). With grafana = false nothing uses it and it is left unconfigured.
provider "grafana" {
  url  = local.grafana_url
  auth = one(aws_grafana_workspace_service_account_token.terraform[*].key)
}
