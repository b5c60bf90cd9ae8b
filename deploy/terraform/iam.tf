# The role the agents assume to remote-write: deploy/iam/ holds its policy and both trust
# policies (the kustomize path documents them for hand use); they are read here and only
# their placeholders are filled in.

locals {
  oidc_issuer = var.oidc_provider_arn == null ? null : split("oidc-provider/", var.oidc_provider_arn)[1]

  trust_policy = {
    pod_identity = file("${path.module}/../iam/remote-write-trust-pod-identity.json")
    # The provider's whole ARN first: it contains the issuer placeholder.
    irsa = var.oidc_provider_arn == null ? null : replace(
      replace(
        replace(
          file("${path.module}/../iam/remote-write-trust-irsa.json"),
          local.placeholders.oidc_arn,
          var.oidc_provider_arn,
        ),
        local.placeholders.oidc_issuer,
        local.oidc_issuer,
      ),
      local.placeholders.irsa_subject,
      "system:serviceaccount:${var.namespace}:${var.service_account}",
    )
  }

  remote_write_policy = replace(
    file("${path.module}/../iam/remote-write-policy.json"),
    local.placeholders.workspace_arn,
    aws_prometheus_workspace.enawatch.arn,
  )
}

resource "aws_iam_role" "remote_write" {
  name                 = "${var.name}-remote-write"
  description          = "enawatch agents remote-write to AMP workspace ${var.workspace_alias} (${var.identity})"
  assume_role_policy   = local.trust_policy[var.identity]
  permissions_boundary = var.role_permissions_boundary
  # Remote write retries for minutes at most; an hour covers any session the SDK chain asks for.
  max_session_duration = 3600

  lifecycle {
    precondition {
      condition     = var.identity != "irsa" || var.oidc_provider_arn != null
      error_message = "identity = \"irsa\" needs oidc_provider_arn (the cluster's IAM OIDC provider)."
    }
    precondition {
      condition     = var.identity != "pod_identity" || var.cluster_name != null
      error_message = "identity = \"pod_identity\" needs cluster_name (the association is made in that cluster)."
    }
  }
}

resource "aws_iam_role_policy" "remote_write" {
  name   = "aps-remote-write"
  role   = aws_iam_role.remote_write.id
  policy = local.remote_write_policy
}

# With Pod Identity the association, not an annotation, ties the service account to the role.
resource "aws_eks_pod_identity_association" "agent" {
  count           = var.identity == "pod_identity" ? 1 : 0
  cluster_name    = var.cluster_name
  namespace       = var.namespace
  service_account = var.service_account
  role_arn        = aws_iam_role.remote_write.arn
}
