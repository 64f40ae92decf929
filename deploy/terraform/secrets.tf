# What the manifests read from the Secret cic-secrets (deploy/k8s: secretKeyRef keys).

resource "random_password" "admin_api_token" {
  length  = 48
  special = false
}

locals {
  database_url = format(
    "postgresql://%s:%s@%s:%d/%s?sslmode=require",
    aws_db_instance.cic.username,
    urlencode(random_password.postgres.result),
    aws_db_instance.cic.address,
    aws_db_instance.cic.port,
    aws_db_instance.cic.db_name,
  )
  redis_url = format(
    "rediss://:%s@%s:%d/0",
    urlencode(random_password.redis.result),
    aws_elasticache_replication_group.cic.primary_endpoint_address,
    aws_elasticache_replication_group.cic.port,
  )
  admin_api_token = coalesce(var.admin_api_token, random_password.admin_api_token.result)

  # Optional keys are left out when empty (the manifests mark them optional).
  secret_data = merge(
    {
      "database-url"    = local.database_url
      "redis-url"       = local.redis_url
      "admin-api-token" = local.admin_api_token
    },
    var.stripe_api_key == "" ? {} : { "stripe-api-key" = var.stripe_api_key },
    var.stripe_webhook_secret == "" ? {} : { "stripe-webhook-secret" = var.stripe_webhook_secret },
    var.skypilot_api_server_endpoint == "" ? {} : { "skypilot-api-server-endpoint" = var.skypilot_api_server_endpoint },
    var.smtp_password == "" ? {} : { "smtp-password" = var.smtp_password },
    var.oidc_client_secret == "" ? {} : { "oidc-client-secret" = var.oidc_client_secret },
  )
}

resource "kubernetes_secret_v1" "cic" {
  count = var.manage_kubernetes_secret ? 1 : 0

  metadata {
    name      = "cic-secrets"
    namespace = var.namespace
    labels = {
      "app.kubernetes.io/part-of"    = "cic"
      "app.kubernetes.io/managed-by" = "terraform"
    }
  }

  type = "Opaque"
  data = local.secret_data
}
