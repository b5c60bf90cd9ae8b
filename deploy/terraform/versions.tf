# Provider ranges are pinned to the major versions this module was written against: the AWS
# provider's 6.0 changed how regions are set per resource, and a silent major upgrade could
# replace the AMP workspace (and lose its data).
terraform {
  # The identity checks are lifecycle preconditions (Terraform 1.2); 1.5 is a floor of
  # maintained releases, not a tested one. `terraform validate` ran with 1.11 (docs/terraform.md).
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.31 brought aws_eks_pod_identity_association; 5.100 is the release it was checked with.
      version = "~> 5.100"
    }
    grafana = {
      source  = "grafana/grafana"
      version = "~> 4.10"
    }
  }
}
