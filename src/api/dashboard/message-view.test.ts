import { describe, expect, it } from 'vitest';
import { fhirJson, hl7Table, MASK } from './message-view.ts';

const SIU = ['MSH|^~\\&|EPIC|GHH|CR|CR|20300101090000||SIU^S12|C-1|P|2.5.1', 'PID|1||MRN-1^^^GHH^MR||SECRETNAME^Ann||19800101|F', 'ZX1', ''].join('\r');

describe('a message laid out', () => {
  it('lists each valued field of each segment with its HL7 name', () => {
    const out = hl7Table(Buffer.from(SIU), true).toString();
    expect(out).toMatch(/PID-5<\/td><td>Patient Name<\/td><td class="value">SECRETNAME\^Ann</);
    expect(out).toMatch(/MSH-10<\/td><td>Message Control ID<\/td><td class="value">C-1</);
    expect(out).toContain('(no fields)');
    expect(out).not.toContain('PID-2<');
  });

  it('without phi: MSH whole, every other value masked the same whatever its length', () => {
    const out = hl7Table(Buffer.from(SIU), false).toString();
    expect(out).not.toContain('SECRETNAME');
    expect(out).not.toContain('MRN-1');
    expect(out).toMatch(/PID-5<\/td><td>Patient Name<\/td><td class="value"><span class="masked">•••<\/span>/);
    expect(out).toContain('C-1');
    expect(MASK).toBe('•••');
  });

  it('shows what cannot be parsed as it came (masked without phi)', () => {
    expect(hl7Table(Buffer.from('garbage SECRET'), true).toString()).toContain('garbage SECRET');
    expect(hl7Table(Buffer.from('garbage SECRET'), false).toString()).not.toContain('SECRET');
  });

  it('pretty-prints FHIR JSON; without phi keeps keys and resourceType only', () => {
    const body = Buffer.from(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'SECRETNAME' }], birthDate: '1980-01-01' }));
    expect(fhirJson(body, true).toString()).toContain('&quot;family&quot;: &quot;SECRETNAME&quot;');
    const masked = fhirJson(body, false).toString();
    expect(masked).not.toContain('SECRETNAME');
    expect(masked).not.toContain('1980');
    expect(masked).toContain('&quot;resourceType&quot;: &quot;Patient&quot;');
    expect(masked).toContain('&quot;family&quot;: &quot;•••&quot;');
  });
});
