#!/usr/bin/env bash
# shellcheck disable=SC2034 # the templates' variables are read by name (render)
# The inference server on ECS Fargate behind an ALB: the seed exercise's Parts 2-5, 7 and 8 as
# aws CLI calls, in order (README.md in this directory walks through them).
#
# THIS NEEDS AN AWS ACCOUNT AND CREATES BILLABLE RESOURCES. Nothing in this repository runs it:
# tools/validate_ecs_examples.py checks the JSON it sends offline (botocore shapes, enums and this
# project's rules); only a real account proves the rest.
#
#   examples/ecs/deploy.sh up [TAG]     build + push TAG (default: the workspace version), create
#                                       everything, wait until stable, one prediction through the ALB
#   examples/ecs/deploy.sh update TAG   build + push TAG, register a new task definition revision
#                                       with it, deploy it (rolling or blue/green, by STRATEGY)
#   examples/ecs/deploy.sh rollback     stop a deployment in progress with ROLLBACK, or else go
#                                       back to the previous task definition revision
#   examples/ecs/deploy.sh down         delete what `up` created
#
# Environment:
#   STRATEGY      rolling (service.json, default) or bluegreen (service-bluegreen.json), for
#                 `up`; the service keeps it, and later commands read it from the service
#   REGION        default: `aws configure get region`
#   CLUSTER       default: inference
#   VPC_ID, PUBLIC_SUBNET_1, PUBLIC_SUBNET_2, SUBNET_1, SUBNET_2 (private), ALB_SG, APP_SG:
#                 default: looked up by the Name tags Exercise 03 gave them
#   ALERT_EMAIL   optional: subscribed to the alarm topic (confirm the mail AWS sends)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)

# The only ${VARS} the JSON templates may use (tools/validate_ecs_examples.py reads this list).
TEMPLATE_VARS=(
  ACCOUNT_ID REGION IMAGE_TAG CLUSTER SUBNET_1 SUBNET_2 APP_SG TG_ARN TG_GREEN_ARN
  LISTENER_RULE_ARN TEST_LISTENER_RULE_ARN ALB_DIMENSION TG_DIMENSION TOPIC_ARN
)

SERVICE=inference-server
FAMILY=inference-server
REPO_NAME=inference-server
LOG_GROUP=/ecs/inference-server
ALB_NAME=inference-server
TG_BLUE_NAME=inference-server-blue
TG_GREEN_NAME=inference-server-green
TOPIC_NAME=inference-server-alerts
EXECUTION_ROLE=inference-server-execution
TASK_ROLE=inference-server-task
INFRA_ROLE=inference-server-ecs-infrastructure
# The server drains for SHUTDOWN_GRACE_SECONDS (10) + SHUTDOWN_TIMEOUT_SECONDS (15) inside the
# task definition's stopTimeout (30); the ALB gives in-flight requests the same 30 s.
DEREGISTRATION_DELAY=30
STRATEGY=${STRATEGY:-rolling}
CLUSTER=${CLUSTER:-inference}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy.sh: %s\n' "$*" >&2; exit 1; }
# For `down`: keep going past what is already gone.
try() { "$@" >/dev/null 2>&1 || log "(skipped: ${*:1:3} …)"; }

RENDER_DIR=$(mktemp -d)
trap 'rm -rf "$RENDER_DIR"' EXIT

# render FILE...: each FILE with the documented ${VARS} filled in, as $RENDER_DIR/FILE. envsubst
# gets the list, so no other `$` text is touched; a variable the file uses must be set.
render() {
  local file var shell_format=""
  for var in "${TEMPLATE_VARS[@]}"; do
    shell_format+="\${$var} "
    export "${var?}"
  done
  for file in "$@"; do
    for var in $(grep -o '[$][{][A-Z0-9_]*[}]' "$HERE/$file" | tr -d '$}{' | sort -u); do
      [[ -n "${!var:-}" ]] || die "$file needs \$$var, which is not set"
    done
    envsubst "$shell_format" <"$HERE/$file" >"$RENDER_DIR/$file"
  done
}

setup_env() {
  REGION=${REGION:-$(aws configure get region || true)}
  [[ -n "$REGION" ]] || die "set REGION (or configure a default region)"
  export AWS_DEFAULT_REGION=$REGION
  ACCOUNT_ID=$(aws sts get-caller-identity --query Account --output text)
  REGISTRY=$ACCOUNT_ID.dkr.ecr.$REGION.amazonaws.com
  case $STRATEGY in rolling | bluegreen) ;; *) die "STRATEGY must be rolling or bluegreen" ;; esac
}

# Exercise 03's VPC, subnets and security groups, by their Name tags, unless given.
lookup_network() {
  by_tag() { aws ec2 "describe-$1" --filters "Name=tag:Name,Values=$2" --query "$3" --output text; }
  VPC_ID=${VPC_ID:-$(by_tag vpcs ml-infrastructure-vpc 'Vpcs[0].VpcId')}
  PUBLIC_SUBNET_1=${PUBLIC_SUBNET_1:-$(by_tag subnets ml-public-subnet-1a 'Subnets[0].SubnetId')}
  PUBLIC_SUBNET_2=${PUBLIC_SUBNET_2:-$(by_tag subnets ml-public-subnet-1b 'Subnets[0].SubnetId')}
  SUBNET_1=${SUBNET_1:-$(by_tag subnets ml-private-subnet-1a 'Subnets[0].SubnetId')}
  SUBNET_2=${SUBNET_2:-$(by_tag subnets ml-private-subnet-1b 'Subnets[0].SubnetId')}
  ALB_SG=${ALB_SG:-$(by_tag security-groups alb-sg 'SecurityGroups[0].GroupId')}
  APP_SG=${APP_SG:-$(by_tag security-groups app-server-sg 'SecurityGroups[0].GroupId')}
  local v
  for v in VPC_ID PUBLIC_SUBNET_1 PUBLIC_SUBNET_2 SUBNET_1 SUBNET_2 ALB_SG APP_SG; do
    [[ -n "${!v}" && "${!v}" != None ]] || die "$v not found: set it"
  done
}

# ARNs and CloudWatch dimensions of what `up` created (for update, rollback, down).
discover() {
  ALB_ARN=$(aws elbv2 describe-load-balancers --names "$ALB_NAME" \
    --query 'LoadBalancers[0].LoadBalancerArn' --output text 2>/dev/null || true)
  TG_ARN=$(aws elbv2 describe-target-groups --names "$TG_BLUE_NAME" \
    --query 'TargetGroups[0].TargetGroupArn' --output text 2>/dev/null || true)
  TG_GREEN_ARN=$(aws elbv2 describe-target-groups --names "$TG_GREEN_NAME" \
    --query 'TargetGroups[0].TargetGroupArn' --output text 2>/dev/null || true)
  TOPIC_ARN=arn:aws:sns:$REGION:$ACCOUNT_ID:$TOPIC_NAME
  LISTENER_ARN="" LISTENER_RULE_ARN="" TEST_LISTENER_RULE_ARN=""
  if [[ -n "$ALB_ARN" && "$ALB_ARN" != None ]]; then
    ALB_DIMENSION=${ALB_ARN#*:loadbalancer/}
    ALB_DNS=$(aws elbv2 describe-load-balancers --load-balancer-arns "$ALB_ARN" \
      --query 'LoadBalancers[0].DNSName' --output text)
    # shellcheck disable=SC2016 # a JMESPath literal, not a shell expansion
    LISTENER_ARN=$(aws elbv2 describe-listeners --load-balancer-arn "$ALB_ARN" \
      --query 'Listeners[?Port==`80`].ListenerArn | [0]' --output text)
  fi
  if [[ -n "$LISTENER_ARN" && "$LISTENER_ARN" != None ]]; then
    LISTENER_RULE_ARN=$(aws elbv2 describe-rules --listener-arn "$LISTENER_ARN" \
      --query "Rules[?Priority=='10'].RuleArn | [0]" --output text)
    TEST_LISTENER_RULE_ARN=$(aws elbv2 describe-rules --listener-arn "$LISTENER_ARN" \
      --query "Rules[?Priority=='5'].RuleArn | [0]" --output text)
  fi
  [[ "$TG_ARN" == None ]] && TG_ARN=""
  [[ "$TG_GREEN_ARN" == None ]] && TG_GREEN_ARN=""
  [[ -n "$TG_ARN" ]] && TG_DIMENSION=${TG_ARN##*:}
  return 0
}

# ---------------------------------------------------------------- Part 2: ECR
push_image() {
  local tag=$1 cli
  cli=$(command -v podman || command -v docker) || die "needs podman or docker"
  log "ECR repository $REPO_NAME (scan on push, immutable tags, lifecycle policy)"
  aws ecr describe-repositories --repository-names "$REPO_NAME" >/dev/null 2>&1 ||
    aws ecr create-repository --repository-name "$REPO_NAME" \
      --image-scanning-configuration scanOnPush=true \
      --image-tag-mutability IMMUTABLE \
      --encryption-configuration encryptionType=AES256 \
      --tags Key=Project,Value=inference-server >/dev/null
  # The policy file is the policy itself; the validator builds this call the same way.
  aws ecr put-lifecycle-policy --repository-name "$REPO_NAME" \
    --lifecycle-policy-text "file://$HERE/ecr-lifecycle-policy.json" >/dev/null
  # Immutable tags: a tag already pushed is the image it names, never rebuilt over.
  if aws ecr describe-images --repository-name "$REPO_NAME" --image-ids "imageTag=$tag" >/dev/null 2>&1; then
    log "$REPO_NAME:$tag is already in ECR"
    return
  fi
  log "build and push $REGISTRY/$REPO_NAME:$tag with $(basename "$cli")"
  aws ecr get-login-password | "$cli" login --username AWS --password-stdin "$REGISTRY"
  # --format docker keeps the HEALTHCHECK under podman (OCI configs have none); Fargate is x86-64.
  local format=()
  [[ $(basename "$cli") == podman ]] && format=(--format docker)
  "$cli" build "${format[@]}" --platform linux/amd64 -f "$REPO_ROOT/Dockerfile.inference" \
    -t "$REGISTRY/$REPO_NAME:$tag" "$REPO_ROOT"
  "$cli" push "$REGISTRY/$REPO_NAME:$tag"
}

# ---------------------------------------------------------------- Part 3: cluster, roles, ALB
create_log_group() {
  log "log group $LOG_GROUP (30 days)"
  aws logs create-log-group --log-group-name "$LOG_GROUP" 2>/dev/null || true
  aws logs put-retention-policy --log-group-name "$LOG_GROUP" --retention-in-days 30
}

create_cluster() {
  log "cluster $CLUSTER: FARGATE base 1 weight 1, FARGATE_SPOT weight 4, Container Insights on"
  # Container Insights publishes RunningTaskCount (the dashboard and the at-max alarm use it).
  aws ecs create-cluster --cluster-name "$CLUSTER" \
    --capacity-providers FARGATE FARGATE_SPOT \
    --default-capacity-provider-strategy \
    capacityProvider=FARGATE,base=1,weight=1 capacityProvider=FARGATE_SPOT,weight=4 \
    --settings name=containerInsights,value=enabled \
    --tags key=Project,value=inference-server >/dev/null
}

ensure_role() {
  local name=$1 service=$2 trust
  aws iam get-role --role-name "$name" >/dev/null 2>&1 && return
  trust=$(printf '{"Version":"2012-10-17","Statement":[%s]}' \
    "{\"Effect\":\"Allow\",\"Principal\":{\"Service\":\"$service\"},\"Action\":\"sts:AssumeRole\"}")
  aws iam create-role --role-name "$name" --tags Key=Project,Value=inference-server \
    --assume-role-policy-document "$trust" >/dev/null
}

create_roles() {
  log "IAM roles: $EXECUTION_ROLE, $TASK_ROLE, $INFRA_ROLE"
  ensure_role "$EXECUTION_ROLE" ecs-tasks.amazonaws.com
  aws iam attach-role-policy --role-name "$EXECUTION_ROLE" \
    --policy-arn arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy
  # awslogs-create-group needs logs:CreateLogGroup, which the managed policy lacks.
  aws iam put-role-policy --role-name "$EXECUTION_ROLE" --policy-name create-log-group \
    --policy-document "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"logs:CreateLogGroup\",\"Resource\":\"arn:aws:logs:$REGION:$ACCOUNT_ID:log-group:$LOG_GROUP:*\"}]}"
  # The server calls no AWS API (the weights come from the Hugging Face hub): no policy at all.
  ensure_role "$TASK_ROLE" ecs-tasks.amazonaws.com
  # ECS-native blue/green: ECS moves the listener rules' weights with this role.
  ensure_role "$INFRA_ROLE" ecs.amazonaws.com
  aws iam attach-role-policy --role-name "$INFRA_ROLE" \
    --policy-arn arn:aws:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers
}

create_target_group() {
  local name=$1 arn
  # /ready is 503 while the model loads and from the moment a drain starts: 2 failures 5 s
  # apart (10 s) take a draining task out before its SHUTDOWN_GRACE_SECONDS (10) run out.
  arn=$(aws elbv2 create-target-group --name "$name" --protocol HTTP --port 8080 \
    --vpc-id "$VPC_ID" --target-type ip \
    --health-check-enabled --health-check-protocol HTTP --health-check-path /ready \
    --matcher HttpCode=200 --health-check-interval-seconds 5 --health-check-timeout-seconds 3 \
    --healthy-threshold-count 2 --unhealthy-threshold-count 2 \
    --tags Key=Project,Value=inference-server \
    --query 'TargetGroups[0].TargetGroupArn' --output text)
  aws elbv2 modify-target-group-attributes --target-group-arn "$arn" \
    --attributes "Key=deregistration_delay.timeout_seconds,Value=$DEREGISTRATION_DELAY" >/dev/null
  printf '%s\n' "$arn"
}

# forward JSON for a rule: all production traffic to blue; ECS moves the weights in blue/green.
forward_actions() {
  printf '[{"Type":"forward","ForwardConfig":{"TargetGroups":[{"TargetGroupArn":"%s","Weight":100},{"TargetGroupArn":"%s","Weight":0}]}}]' \
    "$TG_ARN" "$TG_GREEN_ARN"
}

create_load_balancer() {
  log "ALB $ALB_NAME, target groups $TG_BLUE_NAME / $TG_GREEN_NAME, listener :80"
  aws ec2 authorize-security-group-ingress --group-id "$APP_SG" --protocol tcp --port 8080 \
    --source-group "$ALB_SG" >/dev/null 2>&1 || true # already there
  aws elbv2 create-load-balancer --name "$ALB_NAME" --type application --scheme internet-facing \
    --ip-address-type ipv4 --subnets "$PUBLIC_SUBNET_1" "$PUBLIC_SUBNET_2" \
    --security-groups "$ALB_SG" --tags Key=Project,Value=inference-server >/dev/null
  TG_ARN=$(create_target_group "$TG_BLUE_NAME")
  TG_GREEN_ARN=$(create_target_group "$TG_GREEN_NAME")
  discover
  aws elbv2 wait load-balancer-available --load-balancer-arns "$ALB_ARN"
  if [[ -z "$LISTENER_ARN" || "$LISTENER_ARN" == None ]]; then
    # Traffic goes through the rules below (blue/green needs rules, not the default action).
    LISTENER_ARN=$(aws elbv2 create-listener --load-balancer-arn "$ALB_ARN" --protocol HTTP --port 80 \
      --default-actions '[{"Type":"fixed-response","FixedResponseConfig":{"StatusCode":"404","ContentType":"text/plain","MessageBody":"no route"}}]' \
      --query 'Listeners[0].ListenerArn' --output text)
  fi
  if [[ -z "$TEST_LISTENER_RULE_ARN" || "$TEST_LISTENER_RULE_ARN" == None ]]; then
    # Test traffic (blue/green): requests with this header reach the green tasks before production.
    aws elbv2 create-rule --listener-arn "$LISTENER_ARN" --priority 5 \
      --conditions '[{"Field":"http-header","HttpHeaderConfig":{"HttpHeaderName":"X-Inference-Test","Values":["green"]}}]' \
      --actions "$(forward_actions)" >/dev/null
  fi
  if [[ -z "$LISTENER_RULE_ARN" || "$LISTENER_RULE_ARN" == None ]]; then
    aws elbv2 create-rule --listener-arn "$LISTENER_ARN" --priority 10 \
      --conditions '[{"Field":"path-pattern","PathPatternConfig":{"Values":["/*"]}}]' \
      --actions "$(forward_actions)" >/dev/null
  fi
  discover
}

# ---------------------------------------------------------------- Part 7: alarms, dashboard
create_topic() {
  log "SNS topic $TOPIC_NAME"
  TOPIC_ARN=$(aws sns create-topic --name "$TOPIC_NAME" --query TopicArn --output text)
  if [[ -n "${ALERT_EMAIL:-}" ]]; then
    aws sns subscribe --topic-arn "$TOPIC_ARN" --protocol email \
      --notification-endpoint "$ALERT_EMAIL" >/dev/null
  fi
}

put_alarms() {
  log "alarms (alarms.json) and dashboard (dashboard-body.json)"
  local count i
  render alarms.json dashboard.json dashboard-body.json
  count=$(jq length "$RENDER_DIR/alarms.json")
  for ((i = 0; i < count; i++)); do
    aws cloudwatch put-metric-alarm --cli-input-json "$(jq -c ".[$i]" "$RENDER_DIR/alarms.json")"
  done
  # dashboard.json holds the name; the body is its own file, passed as a string.
  aws cloudwatch put-dashboard --cli-input-json "file://$RENDER_DIR/dashboard.json" \
    --dashboard-body "file://$RENDER_DIR/dashboard-body.json" >/dev/null
}

# ---------------------------------------------------------------- Parts 3-5: task definition, service, scaling
register_task_definition() {
  log "task definition $FAMILY with $REPO_NAME:$IMAGE_TAG"
  render task-definition.json
  TASK_DEFINITION_ARN=$(aws ecs register-task-definition \
    --cli-input-json "file://$RENDER_DIR/task-definition.json" \
    --query taskDefinition.taskDefinitionArn --output text)
  log "registered $TASK_DEFINITION_ARN"
}

service_exists() {
  [[ $(aws ecs describe-services --cluster "$CLUSTER" --services "$SERVICE" \
    --query 'services[0].status' --output text 2>/dev/null) == ACTIVE ]]
}

create_service() {
  local file=service.json
  [[ $STRATEGY == bluegreen ]] && file="service-bluegreen.json"
  if service_exists; then
    log "service $SERVICE exists: deploying $TASK_DEFINITION_ARN"
    aws ecs update-service --cluster "$CLUSTER" --service "$SERVICE" \
      --task-definition "$TASK_DEFINITION_ARN" >/dev/null
  else
    log "service $SERVICE from $file"
    render "$file"
    aws ecs create-service --cli-input-json "file://$RENDER_DIR/$file" >/dev/null
  fi
}

# A blue/green deployment stays unstable through its bake time: wait up to three waiter rounds.
wait_stable() {
  local round
  for round in 1 2 3; do
    log "waiting for $SERVICE to be stable (round $round of 3)"
    aws ecs wait services-stable --cluster "$CLUSTER" --services "$SERVICE" && return 0
  done
  die "$SERVICE did not become stable; see: aws ecs describe-services --cluster $CLUSTER --services $SERVICE"
}

put_scaling() {
  log "autoscaling 2-10 tasks: CPU 70 %, 1000 requests per target per minute"
  render scalable-target.json scaling-cpu.json scaling-requests.json
  aws application-autoscaling register-scalable-target \
    --cli-input-json "file://$RENDER_DIR/scalable-target.json" >/dev/null
  aws application-autoscaling put-scaling-policy \
    --cli-input-json "file://$RENDER_DIR/scaling-cpu.json" >/dev/null
  aws application-autoscaling put-scaling-policy \
    --cli-input-json "file://$RENDER_DIR/scaling-requests.json" >/dev/null
}

# After a blue/green deployment production runs in the other target group: point the request
# scaling policy, the healthy-hosts alarm and the dashboard at the one that has the weight.
retarget() {
  local live strategy
  strategy=$(aws ecs describe-services --cluster "$CLUSTER" --services "$SERVICE" \
    --query 'services[0].deploymentConfiguration.strategy' --output text)
  [[ $strategy == BLUE_GREEN ]] || return 0
  # shellcheck disable=SC2016 # a JMESPath literal, not a shell expansion
  live=$(aws elbv2 describe-rules --rule-arns "$LISTENER_RULE_ARN" \
    --query 'Rules[0].Actions[0].ForwardConfig.TargetGroups[?Weight>`0`].TargetGroupArn | [0]' --output text)
  [[ -n "$live" && "$live" != None ]] || return 0
  TG_DIMENSION=${live##*:}
  log "production target group is now $TG_DIMENSION"
  render scaling-requests.json
  aws application-autoscaling put-scaling-policy \
    --cli-input-json "file://$RENDER_DIR/scaling-requests.json" >/dev/null
  put_alarms
}

predict() {
  log "POST /predict through the ALB: http://$ALB_DNS/predict"
  curl -fsS --retry 10 --retry-delay 6 --retry-all-errors \
    -F "file=@$REPO_ROOT/inference/tests/fixtures/images/cat.jpg" "http://$ALB_DNS/predict"
  printf '\n'
  curl -fsS "http://$ALB_DNS/version"
  printf '\n'
}

# ---------------------------------------------------------------- subcommands
cmd_up() {
  IMAGE_TAG=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n1)}
  command -v jq >/dev/null || die "needs jq"
  setup_env
  lookup_network
  push_image "$IMAGE_TAG"
  create_log_group
  create_cluster
  create_roles
  create_load_balancer
  # The service rolls back on the latency and 5xx alarms, so they exist before it.
  create_topic
  put_alarms
  register_task_definition
  create_service
  wait_stable
  put_scaling
  predict
  log "dashboard: https://$REGION.console.aws.amazon.com/cloudwatch/home?region=$REGION#dashboards:name=inference-server"
}

cmd_update() {
  [[ $# -eq 1 ]] || die "usage: deploy.sh update TAG"
  IMAGE_TAG=$1
  command -v jq >/dev/null || die "needs jq"
  setup_env
  discover
  push_image "$IMAGE_TAG"
  register_task_definition
  log "deploying $TASK_DEFINITION_ARN (the service's own strategy: rolling or blue/green)"
  aws ecs update-service --cluster "$CLUSTER" --service "$SERVICE" \
    --task-definition "$TASK_DEFINITION_ARN" >/dev/null
  wait_stable
  retarget
  predict
}

cmd_rollback() {
  command -v jq >/dev/null || die "needs jq"
  setup_env
  discover
  local in_progress current previous="" arn seen=0
  # A deployment still running (a blue/green one in its bake time included): ECS puts the
  # previous revision back itself, traffic included.
  in_progress=$(aws ecs list-service-deployments --cluster "$CLUSTER" --service "$SERVICE" \
    --status IN_PROGRESS --query 'serviceDeployments[0].serviceDeploymentArn' --output text)
  if [[ -n "$in_progress" && "$in_progress" != None ]]; then
    log "stopping $in_progress with ROLLBACK"
    aws ecs stop-service-deployment --service-deployment-arn "$in_progress" --stop-type ROLLBACK >/dev/null
  else
    current=$(aws ecs describe-services --cluster "$CLUSTER" --services "$SERVICE" \
      --query 'services[0].taskDefinition' --output text)
    for arn in $(aws ecs list-task-definitions --family-prefix "$FAMILY" --status ACTIVE \
      --sort DESC --query 'taskDefinitionArns' --output text); do
      if [[ $seen == 1 ]]; then previous=$arn && break; fi
      [[ $arn == "$current" ]] && seen=1
    done
    [[ -n "$previous" ]] || die "no revision older than $current"
    log "rolling back $current -> $previous"
    aws ecs update-service --cluster "$CLUSTER" --service "$SERVICE" \
      --task-definition "$previous" >/dev/null
  fi
  wait_stable
  retarget
  predict
}

cmd_down() {
  setup_env
  discover
  log "deleting alarms, dashboard, scaling, service, cluster, ALB, topic, logs, roles, ECR"
  if command -v jq >/dev/null; then
    # shellcheck disable=SC2046 # one argument per alarm name
    try aws cloudwatch delete-alarms --alarm-names $(jq -r '.[].AlarmName' "$HERE/alarms.json")
  fi
  try aws cloudwatch delete-dashboards --dashboard-names inference-server
  try aws application-autoscaling deregister-scalable-target --service-namespace ecs \
    --scalable-dimension ecs:service:DesiredCount --resource-id "service/$CLUSTER/$SERVICE"
  try aws ecs delete-service --cluster "$CLUSTER" --service "$SERVICE" --force
  try aws ecs wait services-inactive --cluster "$CLUSTER" --services "$SERVICE"
  try aws ecs delete-cluster --cluster "$CLUSTER"
  local arn
  for arn in $(aws ecs list-task-definitions --family-prefix "$FAMILY" --query taskDefinitionArns --output text); do
    try aws ecs deregister-task-definition --task-definition "$arn"
  done
  if [[ -n "$ALB_ARN" && "$ALB_ARN" != None ]]; then
    try aws elbv2 delete-load-balancer --load-balancer-arn "$ALB_ARN"
    try aws elbv2 wait load-balancers-deleted --load-balancer-arns "$ALB_ARN"
  fi
  [[ -n "$TG_ARN" ]] && try aws elbv2 delete-target-group --target-group-arn "$TG_ARN"
  [[ -n "$TG_GREEN_ARN" ]] && try aws elbv2 delete-target-group --target-group-arn "$TG_GREEN_ARN"
  try aws sns delete-topic --topic-arn "$TOPIC_ARN"
  try aws logs delete-log-group --log-group-name "$LOG_GROUP"
  try aws iam detach-role-policy --role-name "$EXECUTION_ROLE" \
    --policy-arn arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy
  try aws iam delete-role-policy --role-name "$EXECUTION_ROLE" --policy-name create-log-group
  try aws iam detach-role-policy --role-name "$INFRA_ROLE" \
    --policy-arn arn:aws:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers
  local role
  for role in "$EXECUTION_ROLE" "$TASK_ROLE" "$INFRA_ROLE"; do
    try aws iam delete-role --role-name "$role"
  done
  try aws ecr delete-repository --repository-name "$REPO_NAME" --force
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    up) cmd_up "$@" ;;
    update) cmd_update "$@" ;;
    rollback) cmd_rollback "$@" ;;
    down) cmd_down "$@" ;;
    *) die "usage: deploy.sh up [TAG] | update TAG | rollback | down" ;;
  esac
}

# Sourced (tools/validate_ecs_examples.py renders the templates with render), it only defines.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
