{{/*
Names, labels and the values every template derives from. Object names are
"<fullname>-<component>", cut to 63 characters.
*/}}

{{- define "taskplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"<fullname>-<suffix>": call with (dict "ctx" $ "suffix" "api" ["max" 52]). When too
long, the fullname part is cut, never the suffix, so components stay distinct. The
limit is 63 (a DNS label), 52 for a StatefulSet, whose pods carry the label
controller-revision-hash = "<name>-<hash of up to 10 characters>" (63 at most).
*/}}
{{- define "taskplane.componentName" -}}
{{- $max := int (default 63 .max) -}}
{{- $room := sub (sub $max (len .suffix)) 1 | int -}}
{{- printf "%s-%s" (include "taskplane.fullname" .ctx | trunc $room | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "taskplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskplane.namespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/* Selector labels: call with (dict "ctx" $ "component" "api" ["pool" "default"]). */}}
{{- define "taskplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskplane.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .pool }}
taskplane.io/pool: {{ .pool }}
{{- end }}
{{- end -}}

{{/* Labels of every object: call like taskplane.selectorLabels. */}}
{{- define "taskplane.labels" -}}
helm.sh/chart: {{ include "taskplane.chart" .ctx }}
{{ include "taskplane.selectorLabels" . }}
app.kubernetes.io/part-of: taskplane
{{- with .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "taskplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "taskplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: call with (dict "image" .Values.image.api "ctx" $). */}}
{{- define "taskplane.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "taskplane.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The metric names and broker layout the chart depends on (files/contract.yaml). */}}
{{- define "taskplane.contract" -}}
{{- .Files.Get "files/contract.yaml" -}}
{{- end -}}

{{/*
Recursive merge of two maps where the second wins, explicit false/0/"" included
(sprig's mergeOverwrite skips those). Returns YAML: call with
(dict "base" $a "over" $b) and pipe through fromYaml.
*/}}
{{- define "taskplane.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- if and (kindIs "map" $value) (hasKey $out $key) (kindIs "map" (get $out $key)) -}}
{{- $_ := set $out $key (include "taskplane.merge" (dict "base" (get $out $key) "over" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Every worker pool with workers.defaults merged in, plus derived fields:
  fullname     the pool's Deployment (and autoscaler) name
  gracePeriod  the pool's shutdown time plus extraGracePeriodSeconds: maxTaskTimeLimit
               (warm: running tasks finish) or softShutdownTimeout (soft: then they are
               handed back)
  remapSigterm REMAP_SIGTERM: "" (SIGTERM is Celery's warm shutdown) or SIGQUIT (soft)
  queues       the pool's queues, plus Celery's default queue (taskplane.stockQueue) and
               the webhook deliveries' queue (taskplane.webhookQueue) when they hold
               config.defaultQueue without them: the pool's workers consume them then
               (taskplane.worker.worker_argv), so its autoscaler counts them too
Returns YAML {pools: [...]}: use (include "taskplane.pools" . | fromYaml).pools.
*/}}
{{- define "taskplane.pools" -}}
{{- $pools := list -}}
{{- range $pool := .Values.workers.pools -}}
{{- $merged := include "taskplane.merge" (dict "base" $.Values.workers.defaults "over" $pool) | fromYaml -}}
{{- $_ := set $merged "fullname" (include "taskplane.componentName" (dict "ctx" $ "suffix" (printf "worker-%s" $pool.name))) -}}
{{- $shutdownTime := ternary (int $merged.softShutdownTimeout) (int $merged.maxTaskTimeLimit) (eq $merged.shutdown "soft") -}}
{{- $_ := set $merged "gracePeriod" (add $shutdownTime (int $merged.extraGracePeriodSeconds)) -}}
{{- $_ := set $merged "remapSigterm" (ternary "SIGQUIT" "" (eq $merged.shutdown "soft")) -}}
{{- if has $.Values.config.defaultQueue $merged.queues -}}
{{- range $implied := list (include "taskplane.stockQueue" $) (include "taskplane.webhookQueue" $) -}}
{{- if not (has $implied $merged.queues) -}}
{{- $_ := set $merged "queues" (append $merged.queues $implied) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $pools = append $pools $merged -}}
{{- end -}}
{{- toYaml (dict "pools" $pools) -}}
{{- end -}}

{{/* Every queue some pool consumes, sorted and unique: the QUEUES setting. */}}
{{- define "taskplane.allQueues" -}}
{{- $queues := list -}}
{{- range $pool := (include "taskplane.pools" . | fromYaml).pools -}}
{{- $queues = concat $queues $pool.queues -}}
{{- end -}}
{{- $queues | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/* Celery's default queue, where a stock client sends when it names none
(taskplane.runtime.STOCK_DEFAULT_QUEUE; tests/chart ties the two). */}}
{{- define "taskplane.stockQueue" -}}celery{{- end -}}

{{/* The webhook deliveries' queue (WEBHOOK_QUEUE's default; tests/chart ties the two). */}}
{{- define "taskplane.webhookQueue" -}}webhooks{{- end -}}

{{/* Secrets and Redis addresses. */}}
{{- define "taskplane.tokensSecretName" -}}
{{- default (include "taskplane.componentName" (dict "ctx" . "suffix" "api-tokens")) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "taskplane.tokensSecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}tokens{{- end -}}
{{- end -}}

{{- define "taskplane.redisName" -}}
{{- include "taskplane.componentName" (dict "ctx" . "suffix" "redis" "max" 52) -}}
{{- end -}}

{{/* Secret with the password of the in-release Redis. */}}
{{- define "taskplane.redisSecretName" -}}
{{- default (include "taskplane.redisName" .) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "taskplane.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretPasswordKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{/* Secret with the URL of an external Redis. */}}
{{- define "taskplane.externalRedisSecretName" -}}
{{- default (include "taskplane.componentName" (dict "ctx" . "suffix" "redis-external")) .Values.redis.external.existingSecret -}}
{{- end -}}

{{/*
REDIS_URL and REDIS_PASSWORD for a Taskplane container. The password is never pasted
into the URL (Kubernetes' $(VAR) expansion does not escape it): the code adds it,
escaped, to a URL that has none. REDIS_TLS_CA_FILE when a CA Secret is given.
*/}}
{{- define "taskplane.redisEnv" -}}
{{- if and .Values.redis.enabled .Values.redis.sentinel.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "taskplane.redisSecretName" . }}
      key: {{ include "taskplane.redisPasswordKey" . }}
- name: REDIS_URL
  value: {{ include "taskplane.sentinelUrl" . | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterSet | quote }}
# a submission rides through a failover: down-after, then a few seconds of promotion
- name: SUBMIT_RIDE_THROUGH
  value: {{ add (div (add .Values.redis.sentinel.downAfterMilliseconds 999) 1000) 5 | quote }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "taskplane.redisSecretName" . }}
      key: {{ include "taskplane.sentinelPasswordKey" . }}
{{- else if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "taskplane.redisSecretName" . }}
      key: {{ include "taskplane.redisPasswordKey" . }}
- name: REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "taskplane.redisName" .) | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "taskplane.externalRedisSecretName" . }}
      key: {{ .Values.redis.external.existingSecretUrlKey }}
{{- if and .Values.redis.external.existingSecret .Values.redis.external.existingSecretPasswordKey }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretPasswordKey }}
{{- end }}
{{- if .Values.redis.external.caSecret }}
- name: REDIS_TLS_CA_FILE
  value: /etc/taskplane/redis-ca/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* The CA bundle of a TLS Redis (redis.external.caSecret), as a volume and its mount. */}}
{{- define "taskplane.redisCaVolumes" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.external.caSecret }}
    defaultMode: 0444
    items:
      - key: {{ .Values.redis.external.caSecretKey }}
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "taskplane.redisCaMounts" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.caSecret }}
- name: redis-ca
  mountPath: /etc/taskplane/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Environment shared by the API, worker and exporter containers. */}}
{{- define "taskplane.commonEnv" -}}
{{ include "taskplane.redisEnv" . }}
{{- end -}}

{{/*
The settings the chart writes into its ConfigMap, before config.extraEnv (which
validateValues keeps from repeating any of them).
*/}}
{{- define "taskplane.configData" -}}
LOG_LEVEL: {{ .Values.config.logLevel | quote }}
DEFAULT_QUEUE: {{ .Values.config.defaultQueue | quote }}
QUEUES: {{ include "taskplane.allQueues" . | quote }}
TASK_MODULES: {{ join "," .Values.config.taskModules | quote }}
DEFAULT_TIME_LIMIT: {{ .Values.config.defaultTimeLimit | int | quote }}
DEFAULT_SOFT_TIME_LIMIT: {{ .Values.config.defaultSoftTimeLimit | int | quote }}
VISIBILITY_TIMEOUT: {{ .Values.config.visibilityTimeout | int | quote }}
LEASE_INTERVAL: {{ .Values.config.leaseInterval | toString | quote }}
UNACKED_RESTORE_INTERVAL: {{ .Values.config.unackedRestoreInterval | int | quote }}
MAX_DELIVERIES: {{ .Values.config.maxDeliveries | int | quote }}
RESULT_EXPIRES: {{ .Values.config.resultExpires | int | quote }}
MAX_BODY_BYTES: {{ .Values.config.maxBodyBytes | int | quote }}
PROMETHEUS_MULTIPROC_DIR: /run/taskplane/metrics
# The worker and exporter HTTP servers must be reachable by probes and Prometheus,
# over IPv4 and IPv6 (single-stack IPv6 clusters too).
METRICS_HOST: "::"
EXPORTER_PORT: {{ .Values.exporter.port | int | quote }}
WORKER_METRICS_PORT: {{ .Values.workers.metricsPort | int | quote }}
{{- end -}}

{{/* The API container's env entries (api.extraEnv follows them). */}}
{{- define "taskplane.apiEnv" -}}
{{ include "taskplane.commonEnv" . }}
# A value without ':' is a file: the mounted token Secret.
- name: API_TOKENS
  value: /etc/taskplane/tokens/tokens
{{- if .Values.auth.operatorSecret }}
- name: API_ADMIN_TOKENS
  value: /etc/taskplane/operators/tokens
{{- end }}
- name: API_HOST
  value: "::"
- name: API_PORT
  value: {{ .Values.api.port | quote }}
- name: API_WORKERS
  value: {{ .Values.api.workers | quote }}
- name: API_THREADS
  value: {{ .Values.api.threads | quote }}
- name: API_WORKER_CLASS
  value: {{ .Values.api.workerClass | quote }}
- name: API_WORKER_CONNECTIONS
  value: {{ .Values.api.workerConnections | quote }}
- name: MAX_FOLLOWERS
  value: {{ .Values.api.maxFollowers | quote }}
- name: MAX_FOLLOWERS_PER_TENANT
  value: {{ .Values.api.maxFollowersPerTenant | quote }}
- name: API_TIMEOUT
  value: {{ .Values.api.timeout | quote }}
{{- end -}}

{{/* A worker container's env entries: call with (dict "ctx" $ "pool" $pool); the pool's extraEnv follows them. */}}
{{- define "taskplane.workerEnv" -}}
{{ include "taskplane.commonEnv" .ctx }}
- name: WORKER_QUEUES
  value: {{ join "," .pool.queues | quote }}
- name: WORKER_CONCURRENCY
  value: {{ .pool.concurrency | int | quote }}
- name: WORKER_PREFETCH_MULTIPLIER
  value: {{ .pool.prefetchMultiplier | int | quote }}
- name: WORKER_SOFT_SHUTDOWN_TIMEOUT
  value: {{ .pool.softShutdownTimeout | int | quote }}
- name: LIVENESS_TIMEOUT
  value: {{ .pool.livenessTimeout | int | quote }}
- name: REMAP_SIGTERM
  value: {{ .pool.remapSigterm | quote }}
{{- end -}}

{{/*
Names a user's extraEnv repeats from the chart's own: call with (dict "own" <env list
or map YAML> "extra" <list of names>); returns them comma-separated. Two entries of one
name are rejected by server-side apply (Helm 4's default), so validateValues refuses them.
*/}}
{{- define "taskplane.repeatedNames" -}}
{{- $own := list -}}
{{- range .own -}}{{- $own = append $own .name -}}{{- end -}}
{{- $repeated := list -}}
{{- $seen := list -}}
{{- range $name := .extra -}}
{{- if or (has $name $own) (has $name $seen) -}}{{- $repeated = append $repeated $name -}}{{- end -}}
{{- $seen = append $seen $name -}}
{{- end -}}
{{- $repeated | uniq | join ", " -}}
{{- end -}}

{{/* Volume and mount of the token file (API_TOKENS points at it). */}}
{{- define "taskplane.tokensVolume" -}}
- name: api-tokens
  secret:
    secretName: {{ include "taskplane.tokensSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "taskplane.tokensSecretKey" . }}
        path: tokens
{{- if .Values.auth.operatorSecret }}
- name: operator-tokens
  secret:
    secretName: {{ .Values.auth.operatorSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.operatorSecretKey }}
        path: tokens
{{- end }}
{{- end -}}

{{- define "taskplane.tokensMount" -}}
- name: api-tokens
  mountPath: /etc/taskplane/tokens
  readOnly: true
{{- if .Values.auth.operatorSecret }}
- name: operator-tokens
  mountPath: /etc/taskplane/operators
  readOnly: true
{{- end }}
{{- end -}}

{{/* Label matchers of one pool's queue metrics, as a map (HPA selector, KEDA query). */}}
{{- define "taskplane.metricLabels" -}}
{{- $labels := dict -}}
{{- if .ctx.Values.autoscaling.matchExporterJob -}}
{{- $_ := set $labels "job" (include "taskplane.componentName" (dict "ctx" .ctx "suffix" "exporter")) -}}
{{- end -}}
{{- range $k, $v := .ctx.Values.autoscaling.extraMetricLabels -}}
{{- $_ := set $labels $k $v -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* PromQL label matchers for one pool: call with (dict "ctx" $ "pool" $pool). */}}
{{- define "taskplane.promMatchers" -}}
{{- $m := list (printf "namespace=%q" (include "taskplane.namespace" .ctx)) -}}
{{- $labels := include "taskplane.metricLabels" . | fromYaml -}}
{{- range $k := keys $labels | sortAlpha -}}
{{- $m = append $m (printf "%s=%q" $k (get $labels $k)) -}}
{{- end -}}
{{- $queues := list -}}
{{- range .pool.queues -}}{{- $queues = append $queues (regexQuoteMeta .) -}}{{- end -}}
{{- $m = append $m (printf "queue=~%q" (join "|" $queues)) -}}
{{- join "," $m -}}
{{- end -}}

{{/* The autoscaling/v2 behavior of a pool: fast up, slow down. */}}
{{- define "taskplane.scalingBehavior" -}}
scaleUp:
  stabilizationWindowSeconds: {{ int .autoscaling.scaleUp.stabilizationWindowSeconds }}
  selectPolicy: Max
  policies:
    - type: Pods
      value: {{ int .autoscaling.scaleUp.maxPods }}
      periodSeconds: {{ int .autoscaling.scaleUp.periodSeconds }}
    - type: Percent
      value: {{ int .autoscaling.scaleUp.maxPercent }}
      periodSeconds: {{ int .autoscaling.scaleUp.periodSeconds }}
scaleDown:
  stabilizationWindowSeconds: {{ int .autoscaling.scaleDown.stabilizationWindowSeconds }}
  selectPolicy: Max
  policies:
    - type: Percent
      value: {{ int .autoscaling.scaleDown.maxPercent }}
      periodSeconds: {{ int .autoscaling.scaleDown.periodSeconds }}
{{- end -}}

{{/* Volumes every Taskplane container writes to: /tmp and the metrics directory. */}}
{{- define "taskplane.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
- name: prometheus-multiproc
  # In memory: every metric update writes a file-backed mapping, which on the node's
  # disk costs page writeback on the request path (about 3x the metrics' own CPU here).
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- end -}}

{{- define "taskplane.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: prometheus-multiproc
  mountPath: /run/taskplane/metrics
{{- end -}}

{{/*
One readable message for a values combination the schema cannot express, then fail.
Included by NOTES.txt (as bitnami charts do) and by configmap.yaml, so `helm template`
fails too.
*/}}
{{- define "taskplane.validateValues" -}}
{{- $messages := list -}}
{{- if gt (mulf (float64 .Values.config.leaseInterval) 3.0) (float64 .Values.config.visibilityTimeout) -}}
{{- $messages = append $messages (printf "config.leaseInterval (%v) must be at most a third of config.visibilityTimeout (%d), or one late renewal lets a live worker's task be delivered twice" .Values.config.leaseInterval (int .Values.config.visibilityTimeout)) -}}
{{- end -}}
{{- $pools := (include "taskplane.pools" . | fromYaml).pools -}}
{{- $names := list -}}
{{- $consumed := list -}}
{{- range $pool := $pools -}}
{{- if has $pool.name $names -}}
{{- $messages = append $messages (printf "workers.pools: the pool name %q is used twice" $pool.name) -}}
{{- end -}}
{{- $names = append $names $pool.name -}}
{{- $consumed = concat $consumed $pool.queues -}}
{{- if and $pool.autoscaling.hpa.enabled $pool.autoscaling.keda.enabled -}}
{{- $messages = append $messages (printf "workers.pools[%s]: autoscaling.hpa.enabled and autoscaling.keda.enabled are both true; a pool takes one autoscaler, so disable one of them (KEDA creates its own HPA, and two HPAs on one Deployment fight)" $pool.name) -}}
{{- end -}}
{{- if lt (int $pool.maxTaskTimeLimit) (int $.Values.config.defaultTimeLimit) -}}
{{- $messages = append $messages (printf "workers.pools[%s]: maxTaskTimeLimit (%d) is below config.defaultTimeLimit (%d), which every task without its own limit gets" $pool.name (int $pool.maxTaskTimeLimit) (int $.Values.config.defaultTimeLimit)) -}}
{{- end -}}
{{- if and $pool.autoscaling.hpa.enabled (gt (int $pool.autoscaling.hpa.minReplicas) (int $pool.autoscaling.hpa.maxReplicas)) -}}
{{- $messages = append $messages (printf "workers.pools[%s]: autoscaling.hpa.minReplicas exceeds maxReplicas" $pool.name) -}}
{{- end -}}
{{- if and $pool.autoscaling.keda.enabled (gt (int $pool.autoscaling.keda.minReplicaCount) (int $pool.autoscaling.keda.maxReplicaCount)) -}}
{{- $messages = append $messages (printf "workers.pools[%s]: autoscaling.keda.minReplicaCount exceeds maxReplicaCount" $pool.name) -}}
{{- end -}}
{{- if and $pool.autoscaling.keda.enabled (not ($.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject")) -}}
{{- $messages = append $messages (printf "workers.pools[%s]: autoscaling.keda.enabled needs KEDA, whose API (keda.sh/v1alpha1 ScaledObject) this cluster does not serve: install KEDA first, or scale the pool with autoscaling.hpa.enabled=true and keda.enabled=false (with `helm template`, pass --api-versions keda.sh/v1alpha1/ScaledObject)" $pool.name) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.config.defaultQueue $consumed) -}}
{{- $messages = append $messages (printf "config.defaultQueue %q is consumed by no worker pool: tasks sent there would wait forever" .Values.config.defaultQueue) -}}
{{- end -}}
{{- if ge (int .Values.config.defaultSoftTimeLimit) (int .Values.config.defaultTimeLimit) -}}
{{- $messages = append $messages "config.defaultSoftTimeLimit must be below config.defaultTimeLimit" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- $messages = append $messages "redis.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) -}}
{{- $messages = append $messages "redis.external is set while redis.enabled is true: set redis.enabled=false to use the external Redis" -}}
{{- end -}}
{{- if and .Values.redis.external.url .Values.redis.external.existingSecret -}}
{{- $messages = append $messages "set one of redis.external.url and redis.external.existingSecret, not both" -}}
{{- end -}}
{{- if .Values.redis.external.url -}}
{{- $u := urlParse .Values.redis.external.url -}}
{{- if not (has $u.scheme (list "redis" "rediss")) -}}
{{- $messages = append $messages "redis.external.url must start with redis:// or rediss://" -}}
{{- else if not (contains ":" (default "" $u.userinfo)) -}}
{{- $messages = append $messages "redis.external.url has no password (redis://:PASSWORD@host:6379/0); Taskplane refuses a remote Redis without one" -}}
{{- end -}}
{{- end -}}
{{- $extraNames := list -}}
{{- range .Values.api.extraEnv -}}{{- $extraNames = append $extraNames .name -}}{{- end -}}
{{- with include "taskplane.repeatedNames" (dict "own" (include "taskplane.apiEnv" . | fromYamlArray) "extra" $extraNames) -}}
{{- $messages = append $messages (printf "api.extraEnv sets %s, which the chart sets already (or twice): change the value that sets it (api.port, api.workers, ...) or drop the entry" .) -}}
{{- end -}}
{{- range $pool := $pools -}}
{{- $extraNames := list -}}
{{- range $pool.extraEnv -}}{{- $extraNames = append $extraNames .name -}}{{- end -}}
{{- with include "taskplane.repeatedNames" (dict "own" (include "taskplane.workerEnv" (dict "ctx" $ "pool" $pool) | fromYamlArray) "extra" $extraNames) -}}
{{- $messages = append $messages (printf "workers.pools[%s].extraEnv (or workers.defaults.extraEnv) sets %s, which the chart sets already (or twice): change the pool value that sets it or drop the entry" $pool.name .) -}}
{{- end -}}
{{- end -}}
{{- $configOwn := list -}}
{{- range $key, $_ := include "taskplane.configData" . | fromYaml -}}{{- $configOwn = append $configOwn (dict "name" $key) -}}{{- end -}}
{{- with include "taskplane.repeatedNames" (dict "own" $configOwn "extra" (keys .Values.config.extraEnv | sortAlpha)) -}}
{{- $messages = append $messages (printf "config.extraEnv sets %s, which the chart's ConfigMap sets already: use the config value that sets it" .) -}}
{{- end -}}
{{- if gt (add (int .Values.api.preStopSleepSeconds) 20) (int .Values.api.terminationGracePeriodSeconds) -}}
{{- $messages = append $messages (printf "api.preStopSleepSeconds (%d) plus gunicorn's graceful timeout (20 s) exceeds api.terminationGracePeriodSeconds (%d): in-flight requests would be killed" (int .Values.api.preStopSleepSeconds) (int .Values.api.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- if and .Values.api.autoscaling.enabled (gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas)) -}}
{{- $messages = append $messages "api.autoscaling.minReplicas exceeds maxReplicas" -}}
{{- end -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n  - %s" (join "\n  - " $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/* Key of the sentinels' own password in the Redis Secret. */}}
{{- define "taskplane.sentinelPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.sentinel.existingSecretPasswordKey }}{{- else -}}redis-sentinel-password{{- end -}}
{{- end -}}

{{/* The three sentinels, in kombu's Sentinel URL form (REDIS_URL); each pod by its stable
name under the headless Service. */}}
{{- define "taskplane.sentinelUrl" -}}
{{- $name := include "taskplane.redisName" . -}}
{{- $ns := include "taskplane.namespace" . -}}
{{- $hosts := list -}}
{{- range $i := until 3 -}}
{{- $hosts = append $hosts (printf "sentinel://%s-%d.%s.%s.svc:26379/0" $name $i $name $ns) -}}
{{- end -}}
{{- join ";" $hosts -}}
{{- end -}}
