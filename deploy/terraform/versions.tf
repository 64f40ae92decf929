# Managed Postgres (RDS) and Redis (ElastiCache) for CIC on AWS, reachable from the Kubernetes
# cluster's nodes only, and the Secret `cic-secrets` the manifests read. Works with Terraform
# 1.6+ and OpenTofu 1.6+. See docs/operations.md.
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.31"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "app.kubernetes.io/part-of" = "cic", "cic/environment" = var.environment }, var.tags)
  }
}

# The cluster the Secret is written to (only when manage_kubernetes_secret is true).
provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}
