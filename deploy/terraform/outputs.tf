# Named for what they configure: the agent's remote_write entry (docs/remote-write.md, and
# deploy/kubernetes/alternatives/remote-write today; the Helm chart's values once it exists).

output "remote_write_url" {
  description = "The agent's remote_write url: the workspace's endpoint followed by api/v1/remote_write."
  value       = "${aws_prometheus_workspace.enawatch.prometheus_endpoint}api/v1/remote_write"
}

output "region" {
  description = "Region of the workspace: the SigV4 region (the agent also reads it from the URL)."
  value       = local.region
}

output "role_arn" {
  description = "ARN of the IAM role the agents assume to remote-write (aps:RemoteWrite on this workspace only)."
  value       = aws_iam_role.remote_write.arn
}

output "service_account_annotations" {
  description = "Annotations the agent's service account needs: the IRSA role annotation with identity = \"irsa\", none with Pod Identity (the association does it)."
  value       = var.identity == "irsa" ? { "eks.amazonaws.com/role-arn" = aws_iam_role.remote_write.arn } : {}
}

output "pod_identity_association_id" {
  description = "ID of the EKS Pod Identity association (identity = \"pod_identity\"), null with IRSA."
  value       = one(aws_eks_pod_identity_association.agent[*].association_id)
}

output "workspace_id" {
  description = "ID of the AMP workspace (ws-…)."
  value       = aws_prometheus_workspace.enawatch.id
}

output "workspace_arn" {
  description = "ARN of the AMP workspace."
  value       = aws_prometheus_workspace.enawatch.arn
}

output "query_url" {
  description = "The workspace's Prometheus-compatible query endpoint (for Grafana or any SigV4-signing client)."
  value       = aws_prometheus_workspace.enawatch.prometheus_endpoint
}

output "sns_topic_arn" {
  description = "ARN of the SNS topic AMP's Alertmanager publishes alerts to: subscribe your receivers to it."
  value       = aws_sns_topic.alerts.arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key encrypting the workspace, the topic and the log group."
  value       = aws_kms_key.enawatch.arn
}

output "grafana_url" {
  description = "URL of the Amazon Managed Grafana workspace (grafana = true), null otherwise."
  value       = local.grafana_url
}
