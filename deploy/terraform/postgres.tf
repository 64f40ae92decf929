# One database; each service keeps its tables in a schema of its own and migrates it.

resource "random_password" "postgres" {
  length  = 40
  special = false
}

resource "aws_db_subnet_group" "cic" {
  name       = "cic-${var.environment}"
  subnet_ids = var.subnet_ids
}

resource "aws_db_parameter_group" "cic" {
  name   = "cic-${var.environment}-postgres${var.postgres_version}"
  family = "postgres${var.postgres_version}"

  # Connections without TLS are refused (the URL asks for sslmode=require).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
}

resource "aws_db_instance" "cic" {
  identifier     = "cic-${var.environment}"
  engine         = "postgres"
  engine_version = var.postgres_version
  instance_class = var.postgres_instance_class

  db_name  = "cic"
  username = "cic"
  password = random_password.postgres.result
  port     = 5432

  allocated_storage     = var.postgres_storage_gb
  max_allocated_storage = var.postgres_storage_gb * 4
  storage_type          = "gp3"
  storage_encrypted     = true

  multi_az                = var.postgres_multi_az
  db_subnet_group_name    = aws_db_subnet_group.cic.name
  vpc_security_group_ids  = [aws_security_group.postgres.id]
  parameter_group_name    = aws_db_parameter_group.cic.name
  publicly_accessible     = false
  backup_retention_period = var.postgres_backup_retention_days
  copy_tags_to_snapshot   = true

  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "cic-${var.environment}-final"

  auto_minor_version_upgrade   = true
  apply_immediately            = false
  performance_insights_enabled = true
}
