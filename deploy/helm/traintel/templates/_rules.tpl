{{/* The rule groups of prometheus/rules/*.yml (files/rules links there); when
     prometheusRule.runbookBaseURL is set, each alert's runbook_url becomes
     <base>docs/runbooks.md#<alert>. */}}
{{- define "traintel.ruleGroups" -}}
{{- $base := .Values.prometheusRule.runbookBaseURL -}}
{{- $groups := list -}}
{{- range $path, $_ := .Files.Glob "files/rules/*.yml" }}
{{- range (fromYaml ($.Files.Get $path)).groups }}
{{- if $base }}
{{- range .rules }}
{{- if and .annotations .annotations.runbook_url }}
{{- $_ := set .annotations "runbook_url" (regexReplaceAll "^.*?(docs/runbooks\\.md#)" .annotations.runbook_url (printf "%s${1}" $base)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $groups = append $groups . }}
{{- end }}
{{- end }}
{{- if not $groups }}{{ fail "no rule groups found under files/rules (a broken link to prometheus/rules?)" }}{{ end }}
{{- toYaml $groups }}
{{- end -}}
