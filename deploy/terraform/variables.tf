variable "environment" {
  description = "Name of this deployment (dev, prod, ...); part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.environment))
    error_message = "environment must be 2-21 lower-case letters, digits or dashes."
  }
}

variable "region" {
  description = "AWS region of the stores (the cluster's region)."
  type        = string
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- The cluster's network ---------------------------------------------------------------------

variable "vpc_id" {
  description = "VPC of the Kubernetes cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (two or more zones) the stores are placed in."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids needs subnets in at least two availability zones."
  }
}

variable "cluster_security_group_ids" {
  description = "Security groups of the cluster's nodes (EKS: the cluster security group); only they reach the stores."
  type        = list(string)

  validation {
    condition     = length(var.cluster_security_group_ids) >= 1
    error_message = "cluster_security_group_ids needs at least one security group."
  }
}

# --- Postgres ----------------------------------------------------------------------------------

variable "postgres_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "16"
}

variable "postgres_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "postgres_storage_gb" {
  description = "Allocated storage in GiB (grows automatically up to four times this)."
  type        = number
  default     = 50
}

variable "postgres_multi_az" {
  description = "A standby in a second zone (recommended for prod)."
  type        = bool
  default     = true
}

variable "postgres_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery)."
  type        = number
  default     = 14
}

variable "deletion_protection" {
  description = "Refuse to destroy the database (turn off only to tear an environment down)."
  type        = bool
  default     = true
}

# --- Redis -------------------------------------------------------------------------------------

variable "redis_version" {
  description = "Redis engine version (CIC needs 6.2 or later)."
  type        = string
  default     = "7.1"
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_replicas" {
  description = "Read replicas besides the primary; 1 or more gives automatic failover."
  type        = number
  default     = 1
}

# --- Kubernetes Secret -------------------------------------------------------------------------

variable "manage_kubernetes_secret" {
  description = "Write the Secret cic-secrets into the namespace (else read the outputs and create it yourself)."
  type        = bool
  default     = true
}

variable "kubeconfig_path" {
  description = "kubeconfig used to write the Secret."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context of the cluster (null: the current context)."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace of the overlay being deployed (cic for prod, cic-dev for dev)."
  type        = string
  default     = "cic"
}

variable "admin_api_token" {
  description = "ADMIN_API_TOKEN (32+ characters); null generates one (read it from the admin_api_token output)."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.admin_api_token == null || length(coalesce(var.admin_api_token, "")) >= 32
    error_message = "admin_api_token must be at least 32 characters."
  }
}

variable "stripe_api_key" {
  description = "STRIPE_API_KEY; empty: billing keeps its ledger and reports nothing to Stripe."
  type        = string
  default     = ""
  sensitive   = true
}

variable "stripe_webhook_secret" {
  description = "STRIPE_WEBHOOK_SECRET (whsec_...); empty: Stripe webhooks are refused."
  type        = string
  default     = ""
  sensitive   = true
}

variable "skypilot_api_server_endpoint" {
  description = "SKYPILOT_API_SERVER_ENDPOINT (may carry credentials); required with NODE_PROVIDERS=skypilot."
  type        = string
  default     = ""
  sensitive   = true
}

variable "smtp_password" {
  description = "SMTP_PASSWORD for the dashboard's email sign-in (optional)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "oidc_client_secret" {
  description = "OIDC_CLIENT_SECRET for the dashboard's OpenID Connect sign-in (optional)."
  type        = string
  default     = ""
  sensitive   = true
}
