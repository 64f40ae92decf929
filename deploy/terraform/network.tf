# The stores accept connections from the cluster's nodes and nothing else.

resource "aws_security_group" "postgres" {
  name        = "cic-${var.environment}-postgres"
  description = "CIC Postgres: from the Kubernetes cluster only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "postgres_from_cluster" {
  for_each = toset(var.cluster_security_group_ids)

  security_group_id            = aws_security_group.postgres.id
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "Postgres from the cluster"
}

resource "aws_security_group" "redis" {
  name        = "cic-${var.environment}-redis"
  description = "CIC Redis: from the Kubernetes cluster only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_cluster" {
  for_each = toset(var.cluster_security_group_ids)

  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  description                  = "Redis from the cluster"
}
