// Package kubernetes_test checks the example manifests in this directory: each
// YAML document decodes strictly into its Kubernetes API type (a misspelt
// field fails instead of being silently dropped by the API server), and the
// set as a whole keeps the promises the README makes about how kvsync runs.
package kubernetes_test

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	yamlv3 "gopkg.in/yaml.v3"

	"github.com/kvsync/kvsync/internal/config"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	sidecarName  = "kvsync"
	metricsPort  = 9464
	nonrootUID   = 65532
	configKey    = "kvsync.yaml"
	configDir    = "/etc/kvsync"
	tokenEnv     = "CLOUDFLARE_API_TOKEN"
	drainTimeout = 30 // seconds: kvsync's default --drain-timeout
	// Not applied by kustomization.yaml: its token is a placeholder.
	exampleSecretFile = "secret.example.yaml"
	kustomizationFile = "kustomization.yaml"
	// Where client-go's in-cluster config reads the ServiceAccount's token.
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	leaseGroup        = "coordination.k8s.io"
	replicas          = 3
)

// kustomization models the kustomize fields these examples may use; it has no
// type in k8s.io/api. Decoding strictly into it still catches misspellings.
type kustomization struct {
	APIVersion        string            `json:"apiVersion"`
	Kind              string            `json:"kind"`
	Namespace         string            `json:"namespace,omitempty"`
	NamePrefix        string            `json:"namePrefix,omitempty"`
	NameSuffix        string            `json:"nameSuffix,omitempty"`
	Resources         []string          `json:"resources,omitempty"`
	CommonAnnotations map[string]string `json:"commonAnnotations,omitempty"`
	Labels            []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

// kvsyncConfig is the part of kvsync's config file the manifests depend on.
type kvsyncConfig struct {
	StateDir       string `yaml:"state_dir"`
	MetricsListen  string `yaml:"metrics_listen"`
	LeaderElection struct {
		Enabled   bool   `yaml:"enabled"`
		Namespace string `yaml:"namespace"`
		Identity  string `yaml:"identity"`
	} `yaml:"leader_election"`
	Syncs []struct {
		Name      string `yaml:"name"`
		Dir       string `yaml:"dir"`
		LeaseName string `yaml:"lease_name"`
	} `yaml:"syncs"`
}

// manifestSet is every document of every file, decoded.
type manifestSet struct {
	files         []string
	deployments   []*appsv1.Deployment
	configMaps    map[string]*corev1.ConfigMap
	secrets       map[string]*corev1.Secret
	policies      []*networkingv1.NetworkPolicy
	accounts      map[string]*corev1.ServiceAccount
	roles         map[string]*rbacv1.Role
	bindings      []*rbacv1.RoleBinding
	kustomization *kustomization
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// decodeStrict decodes one YAML document into the Go type its apiVersion and
// kind name, refusing unknown and duplicate fields.
func decodeStrict(doc []byte) (any, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		obj = new(appsv1.Deployment)
	case "v1 ConfigMap":
		obj = new(corev1.ConfigMap)
	case "v1 Secret":
		obj = new(corev1.Secret)
	case "networking.k8s.io/v1 NetworkPolicy":
		obj = new(networkingv1.NetworkPolicy)
	case "v1 ServiceAccount":
		obj = new(corev1.ServiceAccount)
	case "rbac.authorization.k8s.io/v1 Role":
		obj = new(rbacv1.Role)
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		obj = new(rbacv1.RoleBinding)
	case "kustomize.config.k8s.io/v1beta1 Kustomization":
		obj = new(kustomization)
	default:
		return nil, fmt.Errorf("apiVersion %q kind %q: no type to check it against (add it to decodeStrict)", tm.APIVersion, tm.Kind)
	}
	// As the API server decodes: field names are case-sensitive (encoding/json
	// alone would accept readOnlyRootFileSystem, which the server rejects),
	// and unknown or duplicate fields are errors.
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	strictErrs, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	if len(strictErrs) > 0 {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, errors.Join(strictErrs...))
	}
	return obj, nil
}

// loadSet decodes every document of every file (name -> contents).
func loadSet(files map[string][]byte) (*manifestSet, error) {
	set := &manifestSet{
		configMaps: map[string]*corev1.ConfigMap{},
		secrets:    map[string]*corev1.Secret{},
		accounts:   map[string]*corev1.ServiceAccount{},
		roles:      map[string]*rbacv1.Role{},
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(files)) {
		set.files = append(set.files, name)
		for i, doc := range docSeparator.Split(string(files[name]), -1) {
			var probe map[string]any
			if err := yaml.Unmarshal([]byte(doc), &probe); err != nil {
				errs = append(errs, fmt.Errorf("%s document %d: %w", name, i+1, err))
				continue
			}
			if probe == nil { // only comments or blank
				continue
			}
			obj, err := decodeStrict([]byte(doc))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s document %d: %w", name, i+1, err))
				continue
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				set.deployments = append(set.deployments, o)
			case *corev1.ConfigMap:
				set.configMaps[o.Name] = o
			case *corev1.Secret:
				set.secrets[o.Name] = o
			case *networkingv1.NetworkPolicy:
				set.policies = append(set.policies, o)
			case *corev1.ServiceAccount:
				set.accounts[o.Name] = o
			case *rbacv1.Role:
				set.roles[o.Name] = o
			case *rbacv1.RoleBinding:
				set.bindings = append(set.bindings, o)
			case *kustomization:
				if name != kustomizationFile {
					errs = append(errs, fmt.Errorf("%s: a Kustomization belongs in %s", name, kustomizationFile))
				}
				set.kustomization = o
			}
		}
	}
	return set, errors.Join(errs...)
}

// check returns every way the set breaks what README.md promises.
func check(set *manifestSet) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if len(set.deployments) != 1 {
		fail("want exactly one Deployment, found %d", len(set.deployments))
		return errs
	}
	d := set.deployments[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		fail("Deployment %s: replicas must be %d (one writes, the others stand by)", d.Name, replicas)
	}
	errs = append(errs, checkStrategy(d)...)
	pod := d.Spec.Template.Spec
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g <= drainTimeout {
		fail("terminationGracePeriodSeconds must exceed kvsync's %ds drain timeout", drainTimeout)
	}

	if slices.ContainsFunc(pod.Containers, func(c corev1.Container) bool { return c.Name == sidecarName }) {
		fail("container %q is a regular container; it must be a native sidecar in initContainers", sidecarName)
	}
	i := slices.IndexFunc(pod.InitContainers, func(c corev1.Container) bool { return c.Name == sidecarName })
	if i < 0 {
		fail("no init container named %q", sidecarName)
		return errs
	}
	c := pod.InitContainers[i]
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		fail("init container %q: restartPolicy must be Always (a native sidecar)", c.Name)
	}

	// Probes and scraping all go to the metrics port.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["metrics"] != metricsPort {
		fail("container %q: want a port named metrics = %d, got %v", c.Name, metricsPort, c.Ports)
	}
	probe := func(what string, p *corev1.Probe, paths ...string) {
		if p == nil || p.HTTPGet == nil {
			fail("container %q: %s must be an httpGet probe", c.Name, what)
			return
		}
		if !slices.Contains(paths, p.HTTPGet.Path) {
			fail("container %q: %s path %q, want one of %v", c.Name, what, p.HTTPGet.Path, paths)
		}
		if got := resolvePort(p.HTTPGet.Port, ports); got != metricsPort {
			fail("container %q: %s port %s resolves to %d, want %d", c.Name, what, p.HTTPGet.Port.String(), got, metricsPort)
		}
	}
	probe("livenessProbe", c.LivenessProbe, "/healthz")
	probe("readinessProbe", c.ReadinessProbe, "/readyz")
	probe("startupProbe", c.StartupProbe, "/healthz", "/readyz")

	ann := d.Spec.Template.Annotations
	for k, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(metricsPort), "prometheus.io/path": "/metrics"} {
		if ann[k] != want {
			fail("pod template annotation %s = %q, want %q", k, ann[k], want)
		}
	}

	errs = append(errs, checkSecurity(pod.SecurityContext, c)...)
	errs = append(errs, checkNetworkPolicy(set.policies, d.Spec.Template.Labels, ports)...)

	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			fail("container %q: no %s request", c.Name, r)
		}
		if q, ok := c.Resources.Limits[r]; !ok || q.IsZero() {
			fail("container %q: no %s limit", c.Name, r)
		}
	}

	// The token comes from a Secret, never inline.
	ei := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == tokenEnv })
	switch {
	case ei < 0:
		fail("container %q: no %s env var", c.Name, tokenEnv)
	case c.Env[ei].Value != "" || c.Env[ei].ValueFrom == nil || c.Env[ei].ValueFrom.SecretKeyRef == nil:
		fail("container %q: %s must come from a secretKeyRef", c.Name, tokenEnv)
	default:
		ref := c.Env[ei].ValueFrom.SecretKeyRef
		s, ok := set.secrets[ref.Name]
		if !ok {
			fail("%s references Secret %q, which no manifest (%s) defines", tokenEnv, ref.Name, exampleSecretFile)
		} else if _, inData := s.Data[ref.Key]; !inData && s.StringData[ref.Key] == "" {
			fail("%s references key %q of Secret %q, which it lacks", tokenEnv, ref.Key, ref.Name)
		}
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			fail("container %q mounts volume %q, which the pod does not define", c.Name, m.Name)
		}
		mounts[path.Clean(m.MountPath)] = m
	}

	// The config: a ConfigMap mounted at /etc/kvsync holding kvsync.yaml.
	cm, ok := mounts[configDir]
	var cfgText string
	switch {
	case !ok:
		fail("container %q: nothing mounted at %s", c.Name, configDir)
	case volumes[cm.Name].ConfigMap == nil:
		fail("volume %q at %s is not a ConfigMap", cm.Name, configDir)
	default:
		ref := volumes[cm.Name].ConfigMap.Name
		m, ok := set.configMaps[ref]
		if !ok {
			fail("volume %q references ConfigMap %q, which no manifest defines", cm.Name, ref)
		} else if cfgText, ok = m.Data[configKey]; !ok {
			fail("ConfigMap %q has no %s", ref, configKey)
		}
		if !cm.ReadOnly {
			fail("container %q: mount %s must be readOnly", c.Name, configDir)
		}
	}
	if cfgText != "" {
		errs = append(errs, checkConfig(cfgText, c, mounts, pod)...)
		errs = append(errs, checkElection(set, cfgText, d, c, mounts, volumes)...)
	}

	errs = append(errs, checkKustomization(set)...)
	return errs
}

// checkStrategy: a rollout never takes a serving pod away before its
// replacement is Ready, and brings up one new pod at a time.
func checkStrategy(d *appsv1.Deployment) []error {
	st := d.Spec.Strategy
	if st.Type != appsv1.RollingUpdateDeploymentStrategyType {
		return []error{fmt.Errorf("Deployment %s: strategy must be RollingUpdate (the election keeps old and new pods from writing at once), got %q", d.Name, st.Type)}
	}
	ru := st.RollingUpdate
	if ru == nil || ru.MaxSurge == nil || ru.MaxUnavailable == nil {
		return []error{fmt.Errorf("Deployment %s: rollingUpdate must set maxSurge: 1 and maxUnavailable: 0 (README), not leave them to the defaults (25%%)", d.Name)}
	}
	var errs []error
	if *ru.MaxSurge != intstr.FromInt32(1) {
		errs = append(errs, fmt.Errorf("Deployment %s: maxSurge %s, want 1: one new pod at a time", d.Name, ru.MaxSurge.String()))
	}
	if *ru.MaxUnavailable != intstr.FromInt32(0) {
		errs = append(errs, fmt.Errorf("Deployment %s: maxUnavailable %s, want 0: no replica stops before its replacement is Ready", d.Name, ru.MaxUnavailable.String()))
	}
	return errs
}

// checkElection: with several replicas the config elects one writer; the pod
// gives kvsync an identity, a namespace and a token for the API (and the app
// no token); and the ServiceAccount's Role grants exactly what the election
// needs on each sync's Lease: get and update by name, create (which RBAC
// cannot limit by name), and nothing else.
func checkElection(set *manifestSet, text string, d *appsv1.Deployment, c corev1.Container, mounts map[string]corev1.VolumeMount, volumes map[string]corev1.Volume) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var cfg kvsyncConfig
	if err := yamlv3.Unmarshal([]byte(text), &cfg); err != nil {
		return []error{fmt.Errorf("%s: %w", configKey, err)}
	}
	if !cfg.LeaderElection.Enabled {
		fail("%s: leader_election.enabled must be true: %d replicas would all write", configKey, replicas)
		return errs
	}

	// Identity and namespace from the downward API, unless the config sets them.
	for env, field := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if (env == "POD_NAME" && cfg.LeaderElection.Identity != "") || (env == "POD_NAMESPACE" && cfg.LeaderElection.Namespace != "") {
			continue
		}
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == env })
		if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.FieldRef == nil || c.Env[i].ValueFrom.FieldRef.FieldPath != field {
			fail("container %q: env %s must come from the downward API (fieldRef %s)", c.Name, env, field)
		}
	}

	// A token for kvsync alone.
	pod := d.Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		fail("automountServiceAccountToken must be false: the app container needs no token; kvsync mounts its own")
	}
	tm, ok := mounts[serviceAccountDir]
	switch {
	case !ok:
		fail("container %q: nothing mounted at %s: client-go's in-cluster config finds no token", c.Name, serviceAccountDir)
	case !tm.ReadOnly:
		fail("container %q: mount %s must be readOnly", c.Name, serviceAccountDir)
	default:
		v := volumes[tm.Name]
		if v.Projected == nil || !slices.ContainsFunc(v.Projected.Sources, func(s corev1.VolumeProjection) bool {
			return s.ServiceAccountToken != nil && s.ServiceAccountToken.Path == "token" && s.ServiceAccountToken.Audience == ""
		}) {
			fail("volume %q at %s: want a projected serviceAccountToken at path token, for the API server's audience", tm.Name, serviceAccountDir)
		}
		for _, o := range pod.Containers {
			if slices.ContainsFunc(o.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == tm.Name }) {
				fail("container %q mounts kvsync's API token (volume %q)", o.Name, tm.Name)
			}
		}
	}

	// The ServiceAccount, bound to a Role that names every Lease.
	sa := pod.ServiceAccountName
	if _, ok := set.accounts[sa]; !ok || sa == "" {
		fail("serviceAccountName %q: no manifest defines that ServiceAccount", sa)
		return errs
	}
	var roles []*rbacv1.Role
	for _, b := range set.bindings {
		bound := slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == ""
		})
		if !bound {
			continue
		}
		if b.RoleRef.Kind != "Role" || b.RoleRef.APIGroup != rbacv1.GroupName {
			fail("RoleBinding %s binds %s %q: want a Role of the pod's namespace", b.Name, b.RoleRef.Kind, b.RoleRef.Name)
			continue
		}
		r, ok := set.roles[b.RoleRef.Name]
		if !ok {
			fail("RoleBinding %s references Role %q, which no manifest defines", b.Name, b.RoleRef.Name)
			continue
		}
		roles = append(roles, r)
	}
	if len(roles) == 0 {
		fail("no RoleBinding binds a Role to ServiceAccount %q", sa)
		return errs
	}
	named := map[string]bool{} // lease names granted get and update
	canCreate := false
	for _, r := range roles {
		for i, rule := range r.Rules {
			where := fmt.Sprintf("Role %s rule %d", r.Name, i+1)
			if !slices.Equal(rule.APIGroups, []string{leaseGroup}) || !slices.Equal(rule.Resources, []string{"leases"}) || len(rule.NonResourceURLs) > 0 {
				fail("%s: grants %v %v: kvsync needs %s leases alone", where, rule.APIGroups, rule.Resources, leaseGroup)
				continue
			}
			verbs := slices.Sorted(slices.Values(rule.Verbs))
			switch {
			case slices.Equal(verbs, []string{"create"}):
				canCreate = true
			case slices.Equal(verbs, []string{"get", "update"}):
				if len(rule.ResourceNames) == 0 {
					fail("%s: get and update on every Lease of the namespace; name kvsync's in resourceNames", where)
				}
				for _, n := range rule.ResourceNames {
					named[n] = true
				}
			default:
				fail("%s: verbs %v; kvsync needs get and update by name, and create", where, rule.Verbs)
			}
		}
	}
	if !canCreate {
		fail("no Role bound to %q may create a Lease: the first replica could not start the election", sa)
	}
	for _, s := range cfg.Syncs {
		switch {
		case s.LeaseName == "":
			fail("%s: sync %q sets no lease_name: its derived name is in no Role's resourceNames", configKey, s.Name)
		case !named[s.LeaseName]:
			fail("sync %q: lease_name %q is not among the Lease names its Role grants get and update on (%v)", s.Name, s.LeaseName, slices.Sorted(maps.Keys(named)))
		}
	}
	return errs
}

// validateWithConfigPackage runs kvsync's own config validation, so the
// example is a config the daemon accepts, not merely valid YAML. It runs
// with the environment the pod gives the container from the downward API
// (leader election takes its namespace and identity from there), and none
// other of those variables: a pod that does not provide POD_NAMESPACE fails
// here as it would in the cluster.
func validateWithConfigPackage(text []byte, c corev1.Container) []error {
	downward := map[string]string{"metadata.name": "site-7d4b9c8f5-x2kqp", "metadata.namespace": "default"}
	for _, name := range []string{"POD_NAME", "POD_NAMESPACE"} {
		old, had := os.LookupEnv(name)
		os.Unsetenv(name)
		defer func() {
			if had {
				os.Setenv(name, old)
			}
		}()
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && downward[e.ValueFrom.FieldRef.FieldPath] != "" {
			os.Setenv(e.Name, downward[e.ValueFrom.FieldRef.FieldPath])
			defer os.Unsetenv(e.Name)
		}
	}
	if _, err := config.Parse(text, "/etc/kvsync/"+configKey); err != nil {
		return []error{fmt.Errorf("kvsync rejects the ConfigMap's %s: %w", configKey, err)}
	}
	return nil
}

func resolvePort(p intstr.IntOrString, named map[string]int32) int32 {
	if p.Type == intstr.String {
		return named[p.StrVal]
	}
	return p.IntVal
}

// checkSecurity checks the sidecar's effective security context: the
// container's own settings, falling back to the pod's where Kubernetes does.
func checkSecurity(psc *corev1.PodSecurityContext, c corev1.Container) []error {
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("container %q: "+format, append([]any{c.Name}, args...)...))
	}
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		fail("no securityContext")
		return errs
	}
	runAsNonRoot := firstBool(sc.RunAsNonRoot, psc.RunAsNonRoot)
	if runAsNonRoot == nil || !*runAsNonRoot {
		fail("runAsNonRoot must be true")
	}
	if uid := firstInt(sc.RunAsUser, psc.RunAsUser); uid == nil || *uid != nonrootUID {
		fail("runAsUser must be %d", nonrootUID)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		fail("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		fail("allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		fail("must not be privileged")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		fail("capabilities must drop ALL")
	} else if len(sc.Capabilities.Add) > 0 {
		fail("capabilities must add none, got %v", sc.Capabilities.Add)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		fail("seccompProfile must be RuntimeDefault")
	}
	return errs
}

// checkNetworkPolicy: a policy isolates the pod's ingress and admits the
// metrics port only from pods of selected namespaces: no rule lets every
// source in (an empty from), or an IP block, or any pod of the cluster.
func checkNetworkPolicy(policies []*networkingv1.NetworkPolicy, podLabels map[string]string, ports map[string]int32) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	isolating, metricsAdmitted := 0, false
	for _, p := range policies {
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil {
			fail("NetworkPolicy %s: podSelector: %v", p.Name, err)
			continue
		}
		if sel.Empty() || !sel.Matches(labels.Set(podLabels)) {
			fail("NetworkPolicy %s: podSelector %s does not select the site pod alone (labels %v)", p.Name, sel, podLabels)
			continue
		}
		if !slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			fail("NetworkPolicy %s: policyTypes must include Ingress, or the pod's ingress is not isolated", p.Name)
			continue
		}
		isolating++
		for i, rule := range p.Spec.Ingress {
			if len(rule.Ports) == 0 {
				fail("NetworkPolicy %s: ingress rule %d lists no ports: it opens every port", p.Name, i)
			}
			admitsMetrics := false
			for _, pp := range rule.Ports {
				if pp.Port == nil || resolvePort(*pp.Port, ports) == metricsPort ||
					(pp.EndPort != nil && pp.Port.Type == intstr.Int && pp.Port.IntVal <= metricsPort && *pp.EndPort >= metricsPort) {
					admitsMetrics = true
				}
			}
			if !admitsMetrics {
				continue
			}
			if len(rule.From) == 0 {
				fail("NetworkPolicy %s: ingress rule %d admits the metrics port from everywhere (no from)", p.Name, i)
				continue
			}
			for _, peer := range rule.From {
				switch {
				case peer.IPBlock != nil:
					fail("NetworkPolicy %s: ingress rule %d admits the metrics port from an IP block (%s), not the scraper's namespace", p.Name, i, peer.IPBlock.CIDR)
				case peer.NamespaceSelector == nil:
					fail("NetworkPolicy %s: ingress rule %d admits the metrics port from pods of the pod's own namespace, not the scraper's", p.Name, i)
				case len(peer.NamespaceSelector.MatchLabels) == 0 && len(peer.NamespaceSelector.MatchExpressions) == 0:
					fail("NetworkPolicy %s: ingress rule %d admits the metrics port from every namespace", p.Name, i)
				default:
					metricsAdmitted = true
				}
			}
		}
	}
	if isolating == 0 {
		fail("no NetworkPolicy isolates the site pod's ingress: every pod in the cluster can reach the metrics port")
	} else if !metricsAdmitted {
		fail("no NetworkPolicy rule admits the scraper's namespace to the metrics port %d", metricsPort)
	}
	return errs
}

func firstBool(v ...*bool) *bool {
	for _, b := range v {
		if b != nil {
			return b
		}
	}
	return nil
}

func firstInt(v ...*int64) *int64 {
	for _, i := range v {
		if i != nil {
			return i
		}
	}
	return nil
}

// checkConfig checks the embedded kvsync.yaml against the pod: metrics reachable
// by the probes, the state dir on a writable volume, each synced dir mounted
// read-only from a volume another container writes.
func checkConfig(text string, c corev1.Container, mounts map[string]corev1.VolumeMount, pod corev1.PodSpec) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(configKey+": "+format, args...)) }
	errs = append(errs, validateWithConfigPackage([]byte(text), c)...)

	var cfg kvsyncConfig
	if err := yamlv3.Unmarshal([]byte(text), &cfg); err != nil {
		fail("%v", err)
		return errs
	}
	host, port, err := net.SplitHostPort(cfg.MetricsListen)
	if err != nil || host != "0.0.0.0" || port != strconv.Itoa(metricsPort) {
		fail("metrics_listen = %q, want 0.0.0.0:%d so the kubelet's probes and Prometheus can reach it", cfg.MetricsListen, metricsPort)
	}

	mountFor := func(p string) (corev1.VolumeMount, bool) {
		p = path.Clean(p)
		for {
			if m, ok := mounts[p]; ok {
				return m, true
			}
			if p == "/" {
				return corev1.VolumeMount{}, false
			}
			p = path.Dir(p)
		}
	}
	if cfg.StateDir == "" {
		fail("state_dir is unset; the image's read-only root has no other writable place")
	} else if m, ok := mountFor(cfg.StateDir); !ok || m.ReadOnly {
		fail("state_dir %s is not on a writable volume of container %q", cfg.StateDir, c.Name)
	}

	if len(cfg.Syncs) == 0 {
		fail("no syncs")
	}
	for _, s := range cfg.Syncs {
		m, ok := mountFor(s.Dir)
		if !ok {
			fail("sync %q: dir %s is not on a volume mounted into container %q", s.Name, s.Dir, c.Name)
			continue
		}
		if !m.ReadOnly {
			fail("sync %q: container %q must mount %s readOnly", s.Name, c.Name, m.MountPath)
		}
		writer := slices.ContainsFunc(pod.Containers, func(o corev1.Container) bool {
			return slices.ContainsFunc(o.VolumeMounts, func(om corev1.VolumeMount) bool { return om.Name == m.Name && !om.ReadOnly })
		})
		if !writer {
			fail("sync %q: no app container writes volume %q", s.Name, m.Name)
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
				fail("sync %q: volume %q should be an emptyDir (or a PVC) shared with the app", s.Name, v.Name)
			}
		}
	}
	return errs
}

// checkKustomization: every manifest but the example Secret is applied.
func checkKustomization(set *manifestSet) []error {
	k := set.kustomization
	if k == nil {
		return []error{fmt.Errorf("no %s", kustomizationFile)}
	}
	var errs []error
	for _, f := range set.files {
		listed := slices.Contains(k.Resources, f)
		switch {
		case f == kustomizationFile:
		case f == exampleSecretFile && listed:
			errs = append(errs, fmt.Errorf("%s must not list %s: its token is a placeholder", kustomizationFile, f))
		case f != exampleSecretFile && !listed:
			errs = append(errs, fmt.Errorf("%s does not list %s", kustomizationFile, f))
		}
	}
	for _, r := range k.Resources {
		if !slices.Contains(set.files, r) {
			errs = append(errs, fmt.Errorf("%s lists %s, which does not exist", kustomizationFile, r))
		}
	}
	return errs
}

func readManifests(t *testing.T) map[string][]byte {
	t.Helper()
	names, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no *.yaml files next to the test")
	}
	files := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		files[n] = b
	}
	return files
}

func TestManifestsDecodeStrictly(t *testing.T) {
	files := readManifests(t)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		t.Run(name, func(t *testing.T) {
			if _, err := loadSet(map[string][]byte{name: files[name]}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestManifestsKeepTheirPromises(t *testing.T) {
	set, err := loadSet(readManifests(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(set.configMaps) == 0 || len(set.secrets) == 0 || set.kustomization == nil {
		t.Fatalf("want a ConfigMap, a Secret and a Kustomization, got %d, %d, %v", len(set.configMaps), len(set.secrets), set.kustomization != nil)
	}
	for _, err := range check(set) {
		t.Error(err)
	}
}

// TestBrokenManifestsFail proves the checks above can fail: each case breaks
// one thing in a copy of the real manifests and expects it named.
func TestBrokenManifestsFail(t *testing.T) {
	tests := []struct {
		name, file, old, new, want string
	}{
		{"misspelt container field", "deployment.yaml", "readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n            seccompProfile:\n              type: RuntimeDefault\n          volumeMounts:\n            - name: site-data\n              mountPath: /data\n              readOnly: true",
			"readOnlyRootFileSystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n            seccompProfile:\n              type: RuntimeDefault\n          volumeMounts:\n            - name: site-data\n              mountPath: /data\n              readOnly: true", `unknown field "spec.template.spec.initContainers[0].securityContext.readOnlyRootFileSystem"`},
		{"misspelt probe field", "deployment.yaml", "path: /readyz", "pat: /readyz", `unknown field`},
		{"misspelt ConfigMap field", "configmap.yaml", "\ndata:\n", "\ndatas:\n", `unknown field "datas"`},
		{"misspelt Secret field", "secret.example.yaml", "stringData:", "stringdata:", `unknown field "stringdata"`},
		{"misspelt kustomization field", "kustomization.yaml", "resources:", "resource:", `unknown field "resource"`},
		{"wrong type", "deployment.yaml", "replicas: 3", "replicas: one", `replicas`},
		{"one replica", "deployment.yaml", "replicas: 3", "replicas: 1", `replicas must be 3`},
		{"Recreate", "deployment.yaml", "type: RollingUpdate\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n", "type: Recreate\n", `strategy must be RollingUpdate`},
		{"default surge", "deployment.yaml", "      maxSurge: 1\n", "", `must set maxSurge: 1 and maxUnavailable: 0`},
		{"pods taken down early", "deployment.yaml", "      maxUnavailable: 0\n", "      maxUnavailable: 1\n", `maxUnavailable 1, want 0`},
		{"misspelt strategy field", "deployment.yaml", "      maxUnavailable: 0\n", "      maxUnavaliable: 0\n", `unknown field "spec.strategy.rollingUpdate.maxUnavaliable"`},
		{"election off", "configmap.yaml", "leader_election:\n      enabled: true", "leader_election:\n      enabled: false", `leader_election.enabled must be true`},
		{"no identity", "deployment.yaml", "fieldPath: metadata.name\n", "fieldPath: metadata.uid\n", `env POD_NAME must come from the downward API`},
		{"no namespace env", "deployment.yaml", "            - name: POD_NAMESPACE\n", "            - name: LEASE_NAMESPACE\n", `env POD_NAMESPACE must come from the downward API`},
		{"token for every container", "deployment.yaml", "automountServiceAccountToken: false", "automountServiceAccountToken: true", `automountServiceAccountToken must be false`},
		{"no token for kvsync", "deployment.yaml", "mountPath: /var/run/secrets/kubernetes.io/serviceaccount", "mountPath: /var/run/secrets/kvsync", `nothing mounted at /var/run/secrets/kubernetes.io/serviceaccount`},
		{"token for the app", "deployment.yaml", "          volumeMounts:\n            - name: site-data\n              mountPath: /data\n      volumes:", "          volumeMounts:\n            - name: site-data\n              mountPath: /data\n            - name: kube-api-access\n              mountPath: /run/token\n      volumes:", `container "app" mounts kvsync's API token`},
		{"another service account", "deployment.yaml", "serviceAccountName: kvsync", "serviceAccountName: default", `serviceAccountName "default": no manifest defines`},
		{"unbound role", "rbac.yaml", "  - kind: ServiceAccount\n    name: kvsync", "  - kind: ServiceAccount\n    name: other", `no RoleBinding binds a Role to ServiceAccount "kvsync"`},
		{"lease not granted", "configmap.yaml", "lease_name: kvsync-site", "lease_name: kvsync-blog", `lease_name "kvsync-blog" is not among the Lease names`},
		{"derived lease name", "configmap.yaml", "        lease_name: kvsync-site\n", "", `sets no lease_name`},
		{"get and update on every lease", "rbac.yaml", "    resourceNames: [\"kvsync-site\"]\n", "", `get and update on every Lease of the namespace`},
		{"no create", "rbac.yaml", "    verbs: [\"create\"]", "    verbs: [\"list\"]", `verbs [list]`},
		{"more than leases", "rbac.yaml", "    resources: [\"leases\"]\n    resourceNames", "    resources: [\"leases\", \"configmaps\"]\n    resourceNames", `kvsync needs coordination.k8s.io leases alone`},
		{"misspelt Role field", "rbac.yaml", "resourceNames:", "resourceName:", `unknown field "rules[0].resourceName"`},
		{"rbac not applied", "kustomization.yaml", "  - rbac.yaml\n", "", `does not list rbac.yaml`},
		{"sidecar without restartPolicy", "deployment.yaml", "          restartPolicy: Always\n", "", `restartPolicy must be Always`},
		{"readiness on the wrong path", "deployment.yaml", "path: /readyz", "path: /ready", `readinessProbe path "/ready"`},
		{"liveness on the wrong port", "deployment.yaml", "path: /healthz\n              port: metrics\n            periodSeconds: 20", "path: /healthz\n              port: 8080\n            periodSeconds: 20", `livenessProbe port 8080 resolves to 8080`},
		{"metrics on loopback", "configmap.yaml", "metrics_listen: 0.0.0.0:9464", "metrics_listen: 127.0.0.1:9464", `metrics_listen = "127.0.0.1:9464"`},
		{"privilege escalation", "deployment.yaml", "allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n            seccompProfile:\n              type: RuntimeDefault\n          volumeMounts:\n            - name: site-data\n              mountPath: /data\n              readOnly: true",
			"allowPrivilegeEscalation: true\n            capabilities:\n              drop: [\"ALL\"]\n            seccompProfile:\n              type: RuntimeDefault\n          volumeMounts:\n            - name: site-data\n              mountPath: /data\n              readOnly: true", `allowPrivilegeEscalation must be false`},
		{"data mounted writable", "deployment.yaml", "mountPath: /data\n              readOnly: true", "mountPath: /data\n              readOnly: false", `must mount /data readOnly`},
		{"scrape port", "deployment.yaml", `prometheus.io/port: "9464"`, `prometheus.io/port: "9090"`, `prometheus.io/port = "9090"`},
		{"token key", "deployment.yaml", "key: api-token", "key: token", `key "token"`},
		{"secret applied", "kustomization.yaml", "  - deployment.yaml\n", "  - deployment.yaml\n  - secret.example.yaml\n", `must not list secret.example.yaml`},
		{"unknown kind", "configmap.yaml", "kind: ConfigMap", "kind: ConfigMop", `no type to check it against`},
		{"misspelt NetworkPolicy field", "networkpolicy.yaml", "policyTypes:", "policyType:", `unknown field "spec.policyType"`},
		{"policy not applied", "kustomization.yaml", "  - networkpolicy.yaml\n", "", `does not list networkpolicy.yaml`},
		{"policy selects another pod", "networkpolicy.yaml", "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: site", "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: other", `no NetworkPolicy isolates the site pod's ingress`},
		{"policy without Ingress", "networkpolicy.yaml", "  policyTypes:\n    - Ingress", "  policyTypes:\n    - Egress", `policyTypes must include Ingress`},
		{"metrics open to everyone", "networkpolicy.yaml", "    - from:\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: monitoring\n      ports:", "    - ports:", `from everywhere`},
		{"metrics open to every namespace", "networkpolicy.yaml", "            matchLabels:\n              kubernetes.io/metadata.name: monitoring", "            matchLabels: {}", `from every namespace`},
		{"metrics open to an IP block", "networkpolicy.yaml", "        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: monitoring", "        - ipBlock:\n            cidr: 0.0.0.0/0", `from an IP block`},
		{"every port open", "networkpolicy.yaml", "      ports:\n        - protocol: TCP\n          port: 9464\n", "", `lists no ports`},
		{"another port admitted", "networkpolicy.yaml", "port: 9464", "port: 8080", `no NetworkPolicy rule admits the scraper's namespace`},
	}
	orig := readManifests(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := strings.Count(string(orig[tt.file]), tt.old); n != 1 {
				t.Fatalf("%s contains %q %d times, want once: update the test case", tt.file, tt.old, n)
			}
			files := maps.Clone(orig)
			files[tt.file] = []byte(strings.Replace(string(orig[tt.file]), tt.old, tt.new, 1))
			set, err := loadSet(files)
			errs := []error{err}
			if err == nil {
				errs = check(set)
			}
			joined := errors.Join(errs...)
			if joined == nil {
				t.Fatalf("no error, want one containing %q", tt.want)
			}
			if !strings.Contains(joined.Error(), tt.want) {
				t.Fatalf("got %v\nwant an error containing %q", joined, tt.want)
			}
		})
	}
}
