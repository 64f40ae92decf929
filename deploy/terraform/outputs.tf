output "database_url" {
  description = "DATABASE_URL: the Secret's database-url."
  value       = local.database_url
  sensitive   = true
}

output "redis_url" {
  description = "REDIS_URL: the Secret's redis-url."
  value       = local.redis_url
  sensitive   = true
}

output "admin_api_token" {
  description = "ADMIN_API_TOKEN: the Secret's admin-api-token."
  value       = local.admin_api_token
  sensitive   = true
}

output "secret_data" {
  description = "Every key of the Secret cic-secrets, for creating it by hand (manage_kubernetes_secret = false)."
  value       = local.secret_data
  sensitive   = true
}

output "postgres_address" {
  description = "Host name of the Postgres instance."
  value       = aws_db_instance.cic.address
}

output "redis_address" {
  description = "Host name of the Redis primary."
  value       = aws_elasticache_replication_group.cic.primary_endpoint_address
}

output "kubernetes_secret" {
  description = "namespace/name of the Secret written (null when manage_kubernetes_secret is false)."
  value       = var.manage_kubernetes_secret ? "${var.namespace}/cic-secrets" : null
}
