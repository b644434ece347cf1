// The shipped marketing configuration (connectors/marketing.yaml, mappings/marketing.yaml) as a
// user meets it: it starts without credentials on outboxes; its commented tool blocks load once
// uncommented; and a rule that would hand a care field to any of the four tools — none of
// which is declared baa: true — is refused when the mappings load, at the field, naming the
// rule, the field and the output (docs/consent.md rule 4).
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.ts';
import { ConfigError, formatConfigIssue } from '../src/errors.ts';

const repo = path.resolve(import.meta.dirname, '..');
const SECRETS = { HUBSPOT_TOKEN: 'pat-na1-x', MAILCHIMP_API_KEY: `${'0'.repeat(32)}-us14`, BREVO_API_KEY: 'xkeysib-x', ACTIVECAMPAIGN_API_TOKEN: 't' };
const made: string[] = [];

afterEach(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A copy of the shipped configuration with the marketing tools' blocks live instead of the outboxes. */
function liveCopy(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-marketing-'));
  made.push(dir);
  cpSync(path.join(repo, 'connectors'), path.join(dir, 'connectors'), { recursive: true });
  cpSync(path.join(repo, 'mappings'), path.join(dir, 'mappings'), { recursive: true });
  const file = path.join(dir, 'connectors', 'marketing.yaml');
  const lines = readFileSync(file, 'utf8').split('\n');
  const outboxes = lines.indexOf('  # Stand-ins until HubSpot is configured (same names as the HubSpot blocks below).');
  const tools = lines.findIndex((l) => l.startsWith('  # # HubSpot:'));
  expect(outboxes).toBeGreaterThan(0);
  expect(tools).toBeGreaterThan(outboxes);
  // What a user does: remove the outboxes, and one "# " from each line of the blocks.
  const live = [...lines.slice(0, outboxes), ...lines.slice(tools).map((l) => l.replace(/^ {2}# ?/, '  '))];
  writeFileSync(file, live.join('\n'));
  return dir;
}

async function issuesOf(dir: string): Promise<string[]> {
  try {
    await loadConfig({ configDir: dir, env: SECRETS });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues.map((i) => formatConfigIssue(i).split(`${dir}${path.sep}`).join(''));
  }
  return [];
}

describe('the shipped marketing configuration', () => {
  it('starts on outboxes without credentials', async () => {
    const plan = await loadConfig({ configDir: repo, env: {} });
    expect(plan.outputs.filter((o) => o.name.startsWith('hubspot-')).map((o) => [o.type, o.name])).toEqual([
      ['outbox', 'hubspot-contacts'],
      ['outbox', 'hubspot-events'],
    ]);
    expect(plan.mappings.filter((r) => ['marketing-contact', 'newsletter-invitation'].includes(r.id)).map((r) => r.send.output)).toEqual(['hubspot-contacts', 'hubspot-events']);
  });

  it('loads the four tools once their blocks are uncommented, the rules routed to HubSpot', async () => {
    const dir = liveCopy();
    const plan = await loadConfig({ configDir: dir, env: SECRETS });
    const marketing = plan.outputs.filter((o) => o.file.endsWith('marketing.yaml')).map((o) => [o.type, o.name]);
    expect(marketing).toEqual([
      ['hubspot', 'hubspot-contacts'],
      ['hubspot', 'hubspot-events'],
      ['mailchimp', 'mailchimp-newsletter'],
      ['brevo', 'brevo-contacts'],
      ['activecampaign', 'activecampaign-contacts'],
    ]);
    // Without the token, the live HubSpot blocks are refused at once.
    expect((await loadConfig({ configDir: dir, env: { ...SECRETS, HUBSPOT_TOKEN: '' } }).catch((e: unknown) => e)) as Error).toBeInstanceOf(ConfigError);
  });

  for (const output of ['hubspot-contacts', 'mailchimp-newsletter', 'brevo-contacts', 'activecampaign-contacts']) {
    it(`refuses care fields to ${output} (no BAA) at load, naming the rule, the field and the output`, async () => {
      const dir = liveCopy();
      writeFileSync(
        path.join(dir, 'mappings', 'phi.yaml'),
        [
          'rules:',
          '  - id: visit-to-crm',
          '    on: appointment.fulfilled',
          '    purpose: service.info',
          '    channel: crm',
          '    send:',
          `      output: ${output}`,
          '      to: patient.telecom[system=email].value',
          '      fields:',
          '        - patient.name.given',
          '        - appointment.serviceType.display',
          '        - appointment.practitioner.name',
          '    at: now',
          '',
        ].join('\n'),
      );
      const issues = (await issuesOf(dir)).filter((i) => i.startsWith('mappings/phi.yaml'));
      expect(issues).toEqual([
        `mappings/phi.yaml:11:11: rule "visit-to-crm": field appointment.serviceType.display may not go to output "${output}", which is not declared baa: true: appointment.serviceType.display is about the patient's care, which with any patient identity is PHI (docs/consent.md rule 4)`,
        expect.stringMatching(new RegExp(`^mappings/phi\\.yaml:12:11: rule "visit-to-crm": field appointment\\.practitioner\\.name may not go to output "${output}"`)),
      ]);
    });
  }

  it('refuses a care purpose to a tool without a BAA, and Mailchimp declared baa: true', async () => {
    const dir = liveCopy();
    const mapping = path.join(dir, 'mappings', 'marketing.yaml');
    writeFileSync(mapping, readFileSync(mapping, 'utf8').replace('purpose: service.info', 'purpose: care.followup'));
    const connectors = path.join(dir, 'connectors', 'marketing.yaml');
    writeFileSync(
      connectors,
      readFileSync(connectors, 'utf8')
        // HubSpot allows the purpose, but is not covered; Mailchimp claims a BAA.
        .replace('allowedPurposes: [service.info, marketing]', 'allowedPurposes: [service.info, marketing, care.followup]')
        .replace('    statusIfNew: pending', '    statusIfNew: pending\n    baa: true'),
    );
    const issues = await issuesOf(dir);
    expect(issues).toContainEqual(expect.stringMatching(/^mappings\/marketing\.yaml:\d+:\d+: rule "marketing-contact": output "hubspot-contacts" is not declared baa: true, so it may not carry care\.followup messages/));
    expect(issues).toContainEqual(expect.stringMatching(/^connectors\/marketing\.yaml:\d+:\d+: .*Mailchimp signs no business associate agreement/));
  });
});
