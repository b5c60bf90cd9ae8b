# Every variable has a type and a description (tests/tools/terraform.rs fails otherwise);
# docs/terraform.md lists them.

# === where and what to call it ===

variable "region" {
  description = "AWS region of the AMP workspace, the SNS topic and the Grafana workspace: the region of the EKS cluster whose agents write to it (remote write across regions works, but pays for inter-region traffic)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as us-east-1 or eu-west-3."
  }
}

variable "name" {
  description = "Prefix of every named resource (IAM roles, SNS topic, KMS alias, log group, Grafana workspace). Change it to install more than one copy in an account."
  type        = string
  default     = "enawatch"

  validation {
    # The tightest of the names it builds: IAM role names (at most 64 characters, with the
    # longest suffix, "-remote-write", added).
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$", var.name))
    error_message = "name must be 1 to 40 letters, digits, '-' or '_', starting with a letter or digit."
  }
}

variable "workspace_alias" {
  description = "Alias of the AMP workspace, as the AMP console lists it."
  type        = string
  default     = "enawatch"

  validation {
    condition     = length(var.workspace_alias) >= 1 && length(var.workspace_alias) <= 100
    error_message = "workspace_alias must be 1 to 100 characters (AMP's limit)."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes them (through the AWS provider's default_tags)."
  type        = map(string)
  default     = {}
}

# === encryption and logs ===

variable "kms_deletion_window_days" {
  description = "Days a deleted KMS key waits before it is gone. The key encrypts the AMP workspace, the SNS topic and the log group: once it is deleted their data cannot be read."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30 (KMS's limits)."
  }
}

variable "workspace_logging" {
  description = "Send the AMP workspace's rule-evaluation and Alertmanager errors to a CloudWatch log group: the only place a rule AMP cannot evaluate, or an SNS publish that AMP's role may not make, shows up."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of the AMP workspace's CloudWatch log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's retention periods: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653."
  }
}

# === the agent's identity ===

variable "identity" {
  description = "How the agent's pods get the remote-write role: \"pod_identity\" (an EKS Pod Identity association; needs the eks-pod-identity-agent add-on and cluster_name) or \"irsa\" (IAM roles for service accounts; needs oidc_provider_arn, and the service account annotated with the role_arn output)."
  type        = string
  default     = "pod_identity"

  validation {
    condition     = contains(["pod_identity", "irsa"], var.identity)
    error_message = "identity must be \"pod_identity\" or \"irsa\"."
  }
}

variable "cluster_name" {
  description = "Name of the EKS cluster the agents run in. Required with identity = \"pod_identity\" (the association is made in that cluster); unused with IRSA."
  type        = string
  default     = null

  validation {
    condition     = var.cluster_name == null || can(regex("^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", var.cluster_name))
    error_message = "cluster_name must be an EKS cluster name: 1 to 100 letters, digits, '-' or '_', starting with a letter or digit."
  }
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (arn:aws:iam::ACCOUNT_ID:oidc-provider/oidc.eks.REGION.amazonaws.com/id/ID). Required with identity = \"irsa\"; the issuer URL is taken from it, so the two cannot disagree."
  type        = string
  default     = null

  validation {
    condition     = var.oidc_provider_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/[^/]+/.+$", var.oidc_provider_arn))
    error_message = "oidc_provider_arn must look like arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE (see `aws eks describe-cluster --query cluster.identity.oidc.issuer`)."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the agent's service account (deploy/kubernetes installs it in enawatch)."
  type        = string
  default     = "enawatch"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a Kubernetes namespace name (RFC 1123 label: lower-case letters, digits and '-', at most 63)."
  }
}

variable "service_account" {
  description = "Name of the agent's Kubernetes service account (deploy/kubernetes names it enawatch)."
  type        = string
  default     = "enawatch"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.service_account))
    error_message = "service_account must be a Kubernetes object name (RFC 1123 subdomain: lower-case letters, digits, '-' and '.')."
  }
}

variable "role_permissions_boundary" {
  description = "ARN of an IAM policy to set as the permissions boundary of the roles this module creates, where the account requires one; null for none."
  type        = string
  default     = null

  validation {
    condition     = var.role_permissions_boundary == null || can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/.+$", var.role_permissions_boundary))
    error_message = "role_permissions_boundary must be an IAM policy ARN."
  }
}

# === Amazon Managed Grafana (optional) ===

variable "grafana" {
  description = "Also create an Amazon Managed Grafana workspace with the AMP data source and the dashboards of deploy/grafana/. Off by default: many teams already have a Grafana."
  type        = bool
  default     = false
}

variable "grafana_authentication_providers" {
  description = "How people sign in to the Grafana workspace: AWS_SSO (IAM Identity Center, which must be enabled in the account or organization) and/or SAML."
  type        = list(string)
  default     = ["AWS_SSO"]

  validation {
    condition     = length(var.grafana_authentication_providers) > 0 && alltrue([for p in var.grafana_authentication_providers : contains(["AWS_SSO", "SAML"], p)])
    error_message = "grafana_authentication_providers must be a non-empty list of \"AWS_SSO\" and/or \"SAML\"."
  }
}

variable "grafana_version" {
  description = "Grafana version of the workspace (major.minor, one Amazon Managed Grafana offers). The dashboards are Grafana 10 dashboards (schemaVersion 39)."
  type        = string
  default     = "10.4"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+$", var.grafana_version)) && tonumber(split(".", var.grafana_version)[0]) >= 10
    error_message = "grafana_version must be major.minor, Grafana 10 or later (the dashboards are Grafana 10 dashboards, schemaVersion 39)."
  }
}

variable "grafana_token_seconds_to_live" {
  description = "Lifetime of the service-account token Terraform uses to write the data source and dashboards into the Grafana workspace. Amazon Managed Grafana allows at most 30 days; after it expires, replace it (docs/terraform.md) before the next plan."
  type        = number
  default     = 2592000

  validation {
    condition     = var.grafana_token_seconds_to_live >= 60 && var.grafana_token_seconds_to_live <= 2592000
    error_message = "grafana_token_seconds_to_live must be between 60 and 2592000 (30 days)."
  }
}
